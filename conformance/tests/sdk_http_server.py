"""The Python SDK's own HTTP server (avp.transport.create_app) under uvicorn,
for `avp conformance http` tests. Usage: sdk_http_server.py PORT"""

import sys

import uvicorn
from avp.transport import create_app


async def accept(msg):
    return {"received_bytes": len(msg.payload)}


if __name__ == "__main__":
    uvicorn.run(create_app(accept), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
