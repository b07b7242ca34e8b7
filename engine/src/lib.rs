//! AVP inference engine on libtorch (tch): latent thinking, KV-cache export and
//! import, generation and cross-model projection (spec/engine.md).
