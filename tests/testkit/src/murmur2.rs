//! The partitioner of Kafka's Java client, as a reference: API.md fixes that a show's events go
//! to the partition Java clients would choose for its key.

/// The Java client's partitioner: murmur2 of the key bytes, made positive, modulo partitions.
pub fn java_partition(key: &[u8], partitions: i32) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    let mut h = SEED ^ key.len() as u32;
    let mut chunks = key.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    ((h & 0x7fff_ffff) % partitions as u32) as i32
}

#[cfg(test)]
#[test]
fn murmur2_matches_the_java_client() {
    // Values computed by org.apache.kafka.common.utils.Utils.murmur2 (Kafka's own test vectors).
    let murmur = |key: &str| java_partition(key.as_bytes(), i32::MAX);
    assert_eq!(murmur("21"), -973932308 & 0x7fff_ffff);
    assert_eq!(murmur("foobar"), -790332482 & 0x7fff_ffff);
    assert_eq!(murmur("a-little-bit-long-string"), -985981536 & 0x7fff_ffff);
    assert_eq!(
        murmur("a-little-bit-longer-string"),
        -1486304829 & 0x7fff_ffff
    );
    assert_eq!(
        murmur("lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8"),
        -58897971 & 0x7fff_ffff
    );
}
