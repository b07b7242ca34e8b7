//! Live HTTP mode (AVP-CONF-40..).
