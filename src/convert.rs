//! fp32 to fp16 / bf16 conversion for the partitioned swap-out path.
//!
//! Round to nearest, ties to even; infinities and signed zeros are kept. A NaN stays a
//! NaN: in fp16 quiet with its sign kept; in bf16 every NaN becomes 0xFFFF, the bits
//! torch's vectorised CPU conversion (and so DeepSpeed's partitioned swap-out) writes, so
//! the swap files hold what DeepSpeed's would. Otherwise values below the half-precision range become subnormals or
//! zero, values above it become infinity. The `half` crate does the work with the CPU's
//! conversion instructions (F16C) where present and a branch-free loop that the compiler
//! vectorises otherwise.

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

/// The element types a swapper stores.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    /// 32-bit IEEE float.
    Fp32 = 0,
    /// 16-bit IEEE float (the default).
    Fp16 = 1,
    /// bfloat16.
    Bf16 = 2,
}

c_enum!(Dtype, "dtype", [Fp32 "fp32", Fp16 "fp16", Bf16 "bf16"]);

impl Dtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::Fp32 => 4,
            Dtype::Fp16 | Dtype::Bf16 => 2,
        }
    }

    /// The name used in the swap folder ("float16" gives `float16params`).
    pub fn folder_name(self) -> &'static str {
        match self {
            Dtype::Fp32 => "float32",
            Dtype::Fp16 => "float16",
            Dtype::Bf16 => "bfloat16",
        }
    }
}

/// Converts `src` into `dst` (which holds `src.len() * dtype.size()` bytes) as `dtype`.
pub fn from_f32(src: &[f32], dtype: Dtype, dst: &mut [u8]) {
    debug_assert_eq!(dst.len(), src.len() * dtype.size());
    match dtype {
        Dtype::Fp32 => {
            for (d, s) in dst.chunks_exact_mut(4).zip(src) {
                d.copy_from_slice(&s.to_ne_bytes());
            }
        }
        Dtype::Fp16 => {
            let mut tmp = vec![f16::ZERO; 0];
            convert_into(
                src,
                dst,
                &mut tmp,
                |out: &mut [f16], s| out.convert_from_f32_slice(s),
                |v, _| v.to_bits(),
            );
        }
        Dtype::Bf16 => {
            let mut tmp = vec![bf16::ZERO; 0];
            convert_into(
                src,
                dst,
                &mut tmp,
                |out: &mut [bf16], s| out.convert_from_f32_slice(s),
                |v, s| if s.is_nan() { BF16_NAN } else { v.to_bits() },
            );
        }
    }
}

/// The bits of every bf16 NaN written (torch's vectorised conversion writes these).
pub const BF16_NAN: u16 = 0xFFFF;

/// Converts in blocks through a small typed scratch buffer (so `dst` needs no alignment).
fn convert_into<T: Copy + Default>(
    src: &[f32],
    dst: &mut [u8],
    scratch: &mut Vec<T>,
    convert: impl Fn(&mut [T], &[f32]),
    bits: impl Fn(T, f32) -> u16,
) {
    const BLOCK: usize = 4096;
    scratch.resize(BLOCK, T::default());
    for (s, d) in src.chunks(BLOCK).zip(dst.chunks_mut(BLOCK * 2)) {
        let out = &mut scratch[..s.len()];
        convert(out, s);
        for ((pair, v), x) in d.chunks_exact_mut(2).zip(out.iter()).zip(s) {
            pair.copy_from_slice(&bits(*v, *x).to_ne_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Round-to-nearest-even fp32 to bf16, written out by hand as the reference.
    fn bf16_ref(x: f32) -> u16 {
        let b = x.to_bits();
        if x.is_nan() {
            return ((b >> 16) as u16) | 0x0040;
        }
        let round = 0x7FFF + ((b >> 16) & 1);
        ((b + round) >> 16) as u16
    }

    fn specials() -> Vec<f32> {
        vec![
            0.0,
            -0.0,
            1.0,
            -1.5,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            -f32::NAN,
            f32::MIN_POSITIVE,
            1e-8,               // fp16 subnormal range
            5.96e-8,            // smallest fp16 subnormal
            2.98e-8,            // half of it: ties to even -> 0
            65504.0,            // fp16 max
            65520.0,            // rounds to fp16 infinity
            1.0 + 1.0 / 1024.0, // 1 + 2^-10: exact in fp16
            1.0 + 1.0 / 2048.0, // 1 + 2^-11: tie, rounds to even (1.0)
            1.0 + 3.0 / 2048.0, // 1 + 3*2^-11: tie, rounds up to even
            3.4e38,
            f32::from_bits(0x3F80_8000), // bf16 tie -> even
            f32::from_bits(0x3F81_8000), // bf16 tie -> even (up)
            f32::from_bits(0x0000_0001), // fp32 subnormal
        ]
    }

    #[test]
    fn fp16_matches_the_ieee_reference_bit_for_bit() {
        let src = specials();
        let mut dst = vec![0u8; src.len() * 2];
        from_f32(&src, Dtype::Fp16, &mut dst);
        for (i, x) in src.iter().enumerate() {
            let got = u16::from_ne_bytes([dst[2 * i], dst[2 * i + 1]]);
            let want = f16::from_f32(*x).to_bits();
            if x.is_nan() {
                assert!(f16::from_bits(got).is_nan(), "{x}");
            } else {
                assert_eq!(got, want, "{x}");
            }
        }
        let got = |i: usize| u16::from_ne_bytes([dst[2 * i], dst[2 * i + 1]]);
        assert_eq!(got(4), 0x7C00); // +inf
        assert_eq!(got(5), 0xFC00); // -inf
        assert_eq!(got(1), 0x8000); // -0
        assert_eq!(got(11), 0x0000); // tie to even: zero
        assert_eq!(got(13), 0x7C00); // overflow: inf
        assert_eq!(got(15), 0x3C00); // tie to even: 1.0
        assert_eq!(got(16), 0x3C02); // tie to even: up
    }

    #[test]
    fn bf16_matches_round_to_nearest_even() {
        let mut src = specials();
        let mut x = 0x1234_5678u32;
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            src.push(f32::from_bits(x));
        }
        let mut dst = vec![0u8; src.len() * 2];
        from_f32(&src, Dtype::Bf16, &mut dst);
        for (i, x) in src.iter().enumerate() {
            let got = u16::from_ne_bytes([dst[2 * i], dst[2 * i + 1]]);
            if x.is_nan() {
                assert_eq!(got, BF16_NAN, "every NaN is 0xFFFF, as torch writes it: {x}");
            } else {
                assert_eq!(got, bf16_ref(*x), "{x:e} ({:#x})", x.to_bits());
            }
        }
    }

    #[test]
    fn fp32_is_a_copy() {
        let src = specials();
        let mut dst = vec![0u8; src.len() * 4];
        from_f32(&src, Dtype::Fp32, &mut dst);
        for (i, x) in src.iter().enumerate() {
            assert_eq!(&dst[4 * i..4 * i + 4], &x.to_ne_bytes());
        }
    }
}
