//! A bitmap in front of an exact set of hashed keys: one bit per value of a
//! hash's top bits, set for every key held. A probe whose bit is clear is
//! absent without a look at the set. At 8 to 16 bits a key it is far smaller
//! than a hash table (about 90 bits a key), so it stays in cache where the
//! table does not, and a probe of an absent key, the common one when many
//! keys meet a smaller set, costs a cached bit test instead of a miss to
//! memory.

/// The bitmap. Its size is a power of two, up to 2^32 bits (512 MiB): past
/// that it would only let more probes through to the set behind it.
#[derive(Debug)]
pub(crate) struct HashBitmap {
    bits: Vec<u64>,
    /// A hash's bit is its top `64 - shift` bits.
    shift: u32,
}

impl HashBitmap {
    /// An empty bitmap of at least `bits_per_key` bits for each of `keys` keys.
    pub(crate) fn for_keys(keys: usize, bits_per_key: usize) -> Self {
        let bit_count = Self::bits_for(keys, bits_per_key);
        HashBitmap {
            bits: vec![0; bit_count / 64],
            shift: 64 - bit_count.trailing_zeros(),
        }
    }

    /// Bytes of the bitmap [`for_keys`](Self::for_keys) makes.
    pub(crate) fn bytes_for(keys: usize, bits_per_key: usize) -> usize {
        Self::bits_for(keys, bits_per_key) / 8
    }

    fn bits_for(keys: usize, bits_per_key: usize) -> usize {
        keys.saturating_mul(bits_per_key)
            .clamp(64, 1 << 32)
            .next_power_of_two()
    }

    /// Sets the bit of a key whose hash is `hash`.
    #[inline]
    pub(crate) fn insert(&mut self, hash: u64) {
        let bit = self.bit(hash);
        self.bits[bit / 64] |= 1 << (bit % 64);
    }

    /// Whether a key whose hash is `hash` may be held: false only if its bit
    /// is clear.
    #[inline]
    pub(crate) fn may_hold(&self, hash: u64) -> bool {
        let bit = self.bit(hash);
        self.bits[bit / 64] & (1 << (bit % 64)) != 0
    }

    /// Heap memory held, in bytes.
    pub(crate) fn memory_bytes(&self) -> usize {
        self.bits.capacity() * 8
    }

    /// The bit of a hash: its top bits (`shift` is at least 32, so the
    /// index fits the bitmap).
    #[inline]
    fn bit(&self, hash: u64) -> usize {
        (hash >> self.shift) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bitmap_holds_every_hash_set_and_is_sized_by_the_keys() {
        let mut bitmap = HashBitmap::for_keys(1000, 16);
        // 16,000 bits, rounded up to 16 Ki: 2 KiB.
        assert_eq!(bitmap.memory_bytes(), 2048);
        assert_eq!(HashBitmap::bytes_for(1000, 16), 2048);
        let held: Vec<u64> = (0..1000u64)
            .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .collect();
        for &h in &held {
            bitmap.insert(h);
        }
        assert!(held.iter().all(|&h| bitmap.may_hold(h)));
        // Absent hashes mostly find their bit clear (16 bits a key: about
        // one in sixteen set), and the extremes index within the bitmap.
        let absent = (0..10_000u64)
            .map(|i| (i + 5000).wrapping_mul(0xc2b2_ae3d_27d4_eb4f))
            .filter(|&h| bitmap.may_hold(h))
            .count();
        assert!(absent < 1500, "{absent} of 10000 absent hashes let through");
        bitmap.may_hold(u64::MAX);
        bitmap.may_hold(0);
        // The least and the greatest bitmaps.
        assert_eq!(HashBitmap::for_keys(0, 8).memory_bytes(), 8);
        assert_eq!(HashBitmap::bytes_for(usize::MAX, 8), 1 << 29);
    }
}
