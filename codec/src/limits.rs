//! Decoder limits (spec/protocol/limits.md, AVP-LIM-*).
//!
//! Each limit is checked against declared sizes before anything is allocated,
//! so a hostile header cannot make the decoder reserve memory it will not use
//! (AVP-LIM-8), and exceeding one is its own kind, `limit_exceeded` (AVP-LIM-9).

/// Bounds a decoder enforces; exceeding one gives `limit_exceeded`.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted `metadata_length` (AVP-LIM-1). Default 1 MiB.
    pub max_metadata_len: u32,
    /// Largest accepted `payload_length` (AVP-LIM-2). Default `u32::MAX` (no limit
    /// beyond the format's own); a router may lower it.
    pub max_payload_len: u32,
    /// Largest decompressed tensor (AVP-LIM-3). Default 1 GiB.
    pub max_decompressed_len: u64,
    /// Most `tensor_shape` entries (AVP-LIM-4). Default 32.
    pub max_shape_rank: usize,
    /// Most `extra` map entries (AVP-LIM-5). Default 4096.
    pub max_extra_entries: usize,
    /// Deepest nesting of unknown protobuf groups (AVP-LIM-6). Default 64.
    pub max_group_depth: usize,
    /// Largest decompressed/compressed size ratio of a zstd payload once the
    /// output exceeds [`Limits::ratio_free_len`] (AVP-LIM-10). Default 1024;
    /// 0 disables the ratio check.
    pub max_decompression_ratio: u32,
    /// Output a zstd frame may always reach whatever its ratio (AVP-LIM-10). Default 16 MiB.
    pub ratio_free_len: u64,
    /// Longest `extra` key or value in bytes (AVP-LIM-11). Default 64 KiB.
    pub max_extra_string_len: usize,
    /// Most layers a KV-cache inner header may declare (AVP-LIM-12). Default 4096.
    pub max_kv_layers: u32,
}

impl Limits {
    /// The defaults of spec/protocol/limits.md.
    pub const DEFAULT: Limits = Limits {
        max_metadata_len: 1 << 20,
        max_payload_len: u32::MAX,
        max_decompressed_len: 1 << 30,
        max_shape_rank: 32,
        max_extra_entries: 4096,
        max_group_depth: 64,
        max_decompression_ratio: 1024,
        ratio_free_len: 16 << 20,
        max_extra_string_len: 64 << 10,
        max_kv_layers: 4096,
    };

    /// Sets [`Limits::max_metadata_len`].
    pub fn with_max_metadata_len(mut self, n: u32) -> Self {
        self.max_metadata_len = n;
        self
    }
    /// Sets [`Limits::max_payload_len`].
    pub fn with_max_payload_len(mut self, n: u32) -> Self {
        self.max_payload_len = n;
        self
    }
    /// Sets [`Limits::max_decompressed_len`].
    pub fn with_max_decompressed_len(mut self, n: u64) -> Self {
        self.max_decompressed_len = n;
        self
    }
    /// Sets [`Limits::max_shape_rank`].
    pub fn with_max_shape_rank(mut self, n: usize) -> Self {
        self.max_shape_rank = n;
        self
    }
    /// Sets [`Limits::max_extra_entries`].
    pub fn with_max_extra_entries(mut self, n: usize) -> Self {
        self.max_extra_entries = n;
        self
    }
    /// Sets [`Limits::max_group_depth`].
    pub fn with_max_group_depth(mut self, n: usize) -> Self {
        self.max_group_depth = n;
        self
    }
    /// Sets [`Limits::max_decompression_ratio`] (0 = no ratio check).
    pub fn with_max_decompression_ratio(mut self, n: u32) -> Self {
        self.max_decompression_ratio = n;
        self
    }
    /// Sets [`Limits::ratio_free_len`].
    pub fn with_ratio_free_len(mut self, n: u64) -> Self {
        self.ratio_free_len = n;
        self
    }
    /// Sets [`Limits::max_extra_string_len`].
    pub fn with_max_extra_string_len(mut self, n: usize) -> Self {
        self.max_extra_string_len = n;
        self
    }
    /// Sets [`Limits::max_kv_layers`].
    pub fn with_max_kv_layers(mut self, n: u32) -> Self {
        self.max_kv_layers = n;
        self
    }

    /// The most bytes a zstd frame of `stored` bytes may decompress to under
    /// AVP-LIM-3 and AVP-LIM-10.
    pub fn decompressed_cap(&self, stored: usize) -> u64 {
        let by_ratio = if self.max_decompression_ratio == 0 {
            u64::MAX
        } else {
            (stored as u64)
                .saturating_mul(u64::from(self.max_decompression_ratio))
                .max(self.ratio_free_len)
        };
        by_ratio.min(self.max_decompressed_len)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
}
