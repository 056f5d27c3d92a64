//! FLAC output: a pure-Rust encoder of 16-bit FLAC (fixed predictors, partitioned Rice coding,
//! stereo decorrelation), so results can be served losslessly compressed without a C library.
//!
//! A stream is the `fLaC` marker, one STREAMINFO metadata block, then frames of [`BLOCK_SIZE`]
//! samples per channel (the last one shorter). Every frame holds one subframe per channel, coded
//! as CONSTANT, VERBATIM or FIXED (a polynomial predictor of order 0 to 4 whose residual is
//! Rice coded in 2^k partitions), whichever is smallest. Stereo frames also try left/side,
//! right/side and mid/side. The bit layout follows RFC 9639; the streams stay within its
//! "streamable subset" whenever the sample rate can be stated in a frame header (every common
//! rate can).
//!
//! Why this encoder and not the `flacenc` crate: `tools/flac-compare` ran both side by side on
//! the same 16-bit integers (60 s of the built-in synth: 32 kHz mono and 48 kHz stereo; an
//! AMD EPYC with AVX2, 2 vCPUs; median of 7 interleaved encodes). Both round-trip bit for bit
//! through symphonia and both STREAMINFO MD5s are right. flacenc 0.5.1, with LPC, writes files
//! 3.0 % (stereo) to 5.5 % (mono) smaller, but takes 1.33x and 1.14x this encoder's time on one
//! thread (0.63x to 0.69x on two threads, but those are the cores generation runs on). And 0.5.1
//! records a short last frame as STREAMINFO's minimum block size, so symphonia cannot decode
//! any file whose length is not a multiple of 4096 samples (flacenc issue 242, fixed after the
//! release) unless the header is patched. Kept: this encoder, faster and without a dependency
//! or a workaround; LPC is the known way to gain those few percent.

// symphonia (already the crate's decoder) provides the MD5 that STREAMINFO carries.
use symphonia::core::checksum::Md5;
use symphonia::core::io::Monitor;

use super::Audio;
use crate::error::EngineError;

/// Samples per channel in every frame but the last (libFLAC's choice for 16-bit audio: long
/// enough to amortise headers, short enough for predictors to follow the music).
pub const BLOCK_SIZE: usize = 4096;
/// Most channels a FLAC stream holds (headers store the count minus one in 3 bits).
pub const MAX_CHANNELS: usize = 8;
/// Highest sample rate accepted. STREAMINFO has 20 bits for it, but 655,350 Hz is the most a
/// frame header can state, and decoders (symphonia, libFLAC before 1.4) refuse anything above.
pub const MAX_SAMPLE_RATE: u32 = 655_350;

/// Bits per sample of every stream written here, as in the S16 WAV.
const BITS_PER_SAMPLE: u32 = 16;
/// Highest order of FLAC's fixed polynomial predictors.
const MAX_FIXED_ORDER: usize = 4;
/// Highest partition order tried (the streamable subset's limit).
const MAX_PARTITION_ORDER: u32 = 8;
/// Highest Rice parameter of residual coding method 0, whose parameters have 4 bits.
const MAX_RICE_PARAM: u32 = 14;
/// The 4-bit parameter value that marks a partition stored as plain signed integers.
const ESCAPE_CODE: u64 = 15;
/// Most samples per channel a stream can count (STREAMINFO's total has 36 bits).
const MAX_TOTAL_SAMPLES: u64 = (1 << 36) - 1;
/// Bytes before the first frame: the marker, the STREAMINFO block header and its 34 bytes.
const HEADER_LEN: usize = 4 + 4 + 34;
/// Bits of a subframe header: a zero bit, 6 type bits, the wasted-bits flag.
const SUBFRAME_HEADER_BITS: u64 = 8;

/// Encodes audio as a 16-bit FLAC file in memory. Samples are quantised exactly as
/// [`super::encode_wav`] does for [`super::SampleFormat::S16`] (clamped to [-1, 1], scaled by
/// `i16::MAX`, rounded), so the FLAC decodes to the same integers as the S16 WAV.
///
/// Takes 1 to [`MAX_CHANNELS`] channels of equal length at 1 to [`MAX_SAMPLE_RATE`] Hz.
/// Audio without samples gives a valid stream with no frames.
pub fn encode_flac(audio: &Audio) -> Result<Vec<u8>, EngineError> {
    let channels = audio.channels.len();
    if channels == 0 || channels > MAX_CHANNELS {
        return Err(EngineError::invalid(
            "channels",
            format!("FLAC holds 1 to {MAX_CHANNELS} channels; this audio has {channels}"),
        ));
    }
    let rate = audio.sample_rate;
    if rate == 0 || rate > MAX_SAMPLE_RATE {
        return Err(EngineError::invalid(
            "sample_rate",
            format!("FLAC holds 1 to {MAX_SAMPLE_RATE} Hz; this audio has {rate} Hz"),
        ));
    }
    let len = audio.frames();
    if audio.channels.iter().any(|c| c.len() != len) {
        return Err(EngineError::invalid(
            "channels",
            "every channel must have the same number of samples",
        ));
    }
    if len as u64 > MAX_TOTAL_SAMPLES {
        return Err(EngineError::invalid(
            "duration",
            format!(
                "FLAC holds at most {MAX_TOTAL_SAMPLES} samples per channel; this audio has {len}"
            ),
        ));
    }
    let pcm: Vec<Vec<i16>> = audio
        .channels
        .iter()
        .map(|c| c.iter().map(|&x| super::to_i16(x)).collect())
        .collect();

    // STREAMINFO needs the frame sizes and the MD5, so its place is kept and filled at the end.
    // Room for about half the 16-bit samples, a typical ratio for music.
    let mut out = Vec::with_capacity(HEADER_LEN + len * channels);
    out.extend_from_slice(b"fLaC");
    out.resize(HEADER_LEN, 0);
    let mut frame_sizes: Option<(usize, usize)> = None;
    let mut md5 = Md5::default();
    let mut interleaved = Vec::with_capacity(BLOCK_SIZE * channels * 2);
    for (number, start) in (0..len).step_by(BLOCK_SIZE).enumerate() {
        let end = (start + BLOCK_SIZE).min(len);
        // The MD5 in STREAMINFO covers the samples interleaved as little-endian integers of the
        // stream's width, so a decoder can check what it reconstructed.
        interleaved.clear();
        for i in start..end {
            for channel in &pcm {
                interleaved.extend_from_slice(&channel[i].to_le_bytes());
            }
        }
        md5.process_buf_bytes(&interleaved);
        // Side channels need 17 bits, so all prediction works on i32.
        let block: Vec<Vec<i32>> = pcm
            .iter()
            .map(|c| c[start..end].iter().map(|&s| i32::from(s)).collect())
            .collect();
        let frame = encode_frame(number as u64, &block, rate);
        frame_sizes = Some(match frame_sizes {
            None => (frame.len(), frame.len()),
            Some((min, max)) => (min.min(frame.len()), max.max(frame.len())),
        });
        out.extend_from_slice(&frame);
    }

    let info = stream_info(rate, channels, len as u64, frame_sizes, md5.md5());
    out[4..HEADER_LEN].copy_from_slice(&info);
    Ok(out)
}

/// The STREAMINFO block with its metadata block header (flagged as the last block).
/// `frame_sizes` is the smallest and largest frame in bytes, `None` when there are no frames
/// (written as 0, "unknown"); a total of 0 samples is likewise read as "unknown", which is
/// harmless for a stream without frames.
fn stream_info(
    rate: u32,
    channels: usize,
    total_samples: u64,
    frame_sizes: Option<(usize, usize)>,
    md5: [u8; 16],
) -> [u8; HEADER_LEN - 4] {
    let (min_frame, max_frame) = frame_sizes.unwrap_or((0, 0));
    let mut w = BitWriter::default();
    // Metadata block header: the last block, type 0 (STREAMINFO), length in bytes.
    w.write(1, 1);
    w.write(0, 7);
    w.write(34, 24);
    // Every frame but the last holds BLOCK_SIZE samples; the spec excludes the last block from
    // the minimum, and decoders derive sample positions from it in fixed-blocksize streams.
    w.write(BLOCK_SIZE as u64, 16);
    w.write(BLOCK_SIZE as u64, 16);
    // Frames are at most about 70 KB (8 channels x 4096 samples x 17 bits), so 24 bits fit.
    w.write(min_frame as u64, 24);
    w.write(max_frame as u64, 24);
    w.write(u64::from(rate), 20);
    w.write(channels as u64 - 1, 3);
    w.write(u64::from(BITS_PER_SAMPLE - 1), 5);
    w.write(total_samples >> 32, 4);
    w.write(total_samples & 0xFFFF_FFFF, 32);
    let mut bytes = [0; HEADER_LEN - 4];
    bytes[..22].copy_from_slice(w.bytes());
    bytes[22..].copy_from_slice(&md5);
    bytes
}

/// One frame: header, a subframe per channel, padding to a byte, CRC-16.
/// `block` holds the channels' samples for this frame, all of the same nonzero length.
fn encode_frame(number: u64, block: &[Vec<i32>], rate: u32) -> Vec<u8> {
    let n = block.first().map_or(0, Vec::len);
    let (assignment, subframes) = plan_channels(block);
    let mut w = BitWriter::default();
    w.write(0b11_1111_1111_1110, 14); // sync code
    w.write(0, 1); // reserved
    w.write(0, 1); // fixed blocking strategy: headers count frames, not samples
    let (block_code, block_extra) = block_size_code(n);
    let (rate_code, rate_extra) = sample_rate_code(rate);
    w.write(block_code, 4);
    w.write(rate_code, 4);
    w.write(assignment, 4);
    w.write(0b100, 3); // 16 bits per sample
    w.write(0, 1); // reserved
    for byte in utf8_number(number) {
        w.write(u64::from(byte), 8);
    }
    for (value, bits) in block_extra.into_iter().chain(rate_extra) {
        w.write(value, bits);
    }
    // Everything so far is whole bytes, so the CRC covers exactly the header.
    let crc = crc8(w.bytes());
    w.write(u64::from(crc), 8);
    for subframe in &subframes {
        let before = w.bit_len();
        subframe.write(&mut w);
        // The plans' bit counts decide between codings, so they must be exact.
        debug_assert_eq!(w.bit_len() - before, subframe.bits);
    }
    w.align();
    let crc = crc16(w.bytes());
    w.write(u64::from(crc), 16);
    w.into_bytes()
}

/// Chooses how the channels are stored: the 4-bit channel assignment code and the subframes in
/// stream order. Stereo tries the four codings and keeps the smallest; the side channel
/// (left - right) needs 17 bits.
fn plan_channels(block: &[Vec<i32>]) -> (u64, Vec<Subframe>) {
    let bps = BITS_PER_SAMPLE;
    if let [left, right] = block {
        let side: Vec<i32> = left.iter().zip(right).map(|(l, r)| l - r).collect();
        // The decoder rebuilds left and right from mid and side, using side's lowest bit for
        // what the shift drops.
        let mid: Vec<i32> = left.iter().zip(right).map(|(l, r)| (l + r) >> 1).collect();
        let left = plan_subframe(left, bps);
        let right = plan_subframe(right, bps);
        let side = plan_subframe(&side, bps + 1);
        let mid = plan_subframe(&mid, bps);
        let independent = left.bits + right.bits;
        let left_side = left.bits + side.bits;
        let right_side = side.bits + right.bits;
        let mid_side = mid.bits + side.bits;
        let smallest = independent.min(left_side).min(right_side).min(mid_side);
        return if smallest == independent {
            (0b0001, vec![left, right])
        } else if smallest == left_side {
            (0b1000, vec![left, side])
        } else if smallest == right_side {
            (0b1001, vec![side, right])
        } else {
            (0b1010, vec![mid, side])
        };
    }
    let subframes: Vec<Subframe> = block.iter().map(|c| plan_subframe(c, bps)).collect();
    (block.len() as u64 - 1, subframes)
}

/// How one channel of a frame is coded, and its exact size.
struct Subframe {
    /// Bits per sample of this channel (17 for a side channel).
    bps: u32,
    /// The coding and what it stores.
    coding: Coding,
    /// Exact size in bits, header included.
    bits: u64,
}

/// The subframe types used here (no LPC: fixed predictors need no coefficient search).
enum Coding {
    /// Every sample has this value.
    Constant(i32),
    /// The samples as they are.
    Verbatim(Vec<i32>),
    /// A fixed predictor of order `warmup.len()`: the first samples verbatim, then the
    /// prediction error.
    Fixed {
        /// The first `order` samples, which start the predictor.
        warmup: Vec<i32>,
        /// Sample minus prediction for the remaining samples.
        residual: Vec<i32>,
        /// How the residual is partitioned and coded.
        rice: RicePlan,
    },
}

/// The partitioned Rice coding of a residual.
struct RicePlan {
    /// The block splits into 2^order partitions.
    order: u32,
    /// Per partition, in order.
    partitions: Vec<PartitionCoding>,
}

/// How one residual partition is stored.
#[derive(Clone, Copy)]
enum PartitionCoding {
    /// Rice code with this parameter.
    Rice(u32),
    /// Escape code: plain signed integers of this many bits (0 when all are zero).
    Escape(u32),
}

/// Picks the smallest coding of one channel's samples.
fn plan_subframe(samples: &[i32], bps: u32) -> Subframe {
    let n = samples.len();
    let first = samples.first().copied().unwrap_or(0);
    if samples.iter().all(|&s| s == first) {
        return Subframe {
            bps,
            coding: Coding::Constant(first),
            bits: SUBFRAME_HEADER_BITS + u64::from(bps),
        };
    }
    let mut best = Subframe {
        bps,
        coding: Coding::Verbatim(samples.to_vec()),
        bits: SUBFRAME_HEADER_BITS + n as u64 * u64::from(bps),
    };
    // A non-constant block has at least 2 samples; the predictor needs order < n so that some
    // residual remains to partition.
    for order in 0..=MAX_FIXED_ORDER.min(n - 1) {
        let residual = fixed_residual(samples, order);
        let (rice, rice_bits) = plan_residual(&residual, n, order);
        let bits = SUBFRAME_HEADER_BITS + (order as u64) * u64::from(bps) + rice_bits;
        if bits < best.bits {
            best = Subframe {
                bps,
                coding: Coding::Fixed {
                    warmup: samples[..order].to_vec(),
                    residual,
                    rice,
                },
                bits,
            };
        }
    }
    best
}

/// Sample minus the fixed polynomial prediction of the given order, for samples `order..`.
/// Inputs have at most 17 bits and the coefficients' magnitudes sum to at most 16, so the
/// residual fits 21 bits and i32 arithmetic cannot overflow.
fn fixed_residual(x: &[i32], order: usize) -> Vec<i32> {
    (order..x.len())
        .map(|i| match order {
            0 => x[i],
            1 => x[i] - x[i - 1],
            2 => x[i] - 2 * x[i - 1] + x[i - 2],
            3 => x[i] - 3 * x[i - 1] + 3 * x[i - 2] - x[i - 3],
            _ => x[i] - 4 * x[i - 1] + 6 * x[i - 2] - 4 * x[i - 3] + x[i - 4],
        })
        .collect()
}

/// Maps signed residuals to unsigned Rice symbols: 0, -1, 1, -2, ... -> 0, 1, 2, 3, ...
fn zigzag(r: i32) -> u64 {
    ((r << 1) ^ (r >> 31)) as u32 as u64
}

/// Bits of the narrowest two's-complement field that holds `r` (0 for 0, as the escape code
/// allows an all-zero partition in no bits).
fn signed_width(r: i32) -> u32 {
    if r == 0 {
        0
    } else {
        33 - (r ^ (r >> 31)).leading_zeros()
    }
}

/// What the partition search needs to know of a run of residuals.
#[derive(Clone, Copy)]
struct PartitionStats {
    /// Residuals in the run.
    count: u64,
    /// Sum of their Rice symbols.
    sum: u64,
    /// Widest escape field any of them needs.
    width: u32,
}

impl PartitionStats {
    /// Measures a run of residuals.
    fn of(residual: &[i32]) -> Self {
        Self {
            count: residual.len() as u64,
            sum: residual.iter().map(|&r| zigzag(r)).sum(),
            width: residual.iter().map(|&r| signed_width(r)).max().unwrap_or(0),
        }
    }

    /// The statistics of two adjacent runs taken as one.
    fn merge(a: Self, b: Self) -> Self {
        Self {
            count: a.count + b.count,
            sum: a.sum + b.sum,
            width: a.width.max(b.width),
        }
    }

    /// The cheapest coding of this run and its estimated size in bits, parameter field
    /// included. A Rice code with parameter k costs k + 1 bits per symbol plus the symbol
    /// shifted right by k; `sum >> k` bounds the sum of the shifted symbols from above (by less
    /// than `count`), so the estimate never undersells a parameter. The escape size is exact.
    fn cheapest(&self) -> (PartitionCoding, u64) {
        let mut best = (
            PartitionCoding::Escape(self.width),
            4 + 5 + self.count * u64::from(self.width),
        );
        for k in 0..=MAX_RICE_PARAM {
            let bits = 4 + self.count * u64::from(k + 1) + (self.sum >> k);
            if bits < best.1 {
                best = (PartitionCoding::Rice(k), bits);
            }
        }
        best
    }
}

/// Chooses the partition order and each partition's coding for the residual of a predictor
/// of `order` over a block of `n` samples; returns the plan and its exact size in bits
/// (coding method and partition order fields included).
///
/// Partition `j` of `2^p` covers block samples `j * (n >> p)..(j + 1) * (n >> p)`; the first
/// partition lacks the `order` warm-up samples. The statistics of the finest allowed
/// partitioning are merged pairwise to evaluate every coarser one without rescanning.
fn plan_residual(residual: &[i32], n: usize, order: usize) -> (RicePlan, u64) {
    // Partitions must split the block evenly, and the first must keep at least one residual.
    let mut finest = 0;
    while finest < MAX_PARTITION_ORDER
        && n.is_multiple_of(1 << (finest + 1))
        && (n >> (finest + 1)) > order
    {
        finest += 1;
    }
    let part_len = n >> finest;
    let mut stats: Vec<PartitionStats> = (0..1usize << finest)
        .map(|j| {
            let start = (j * part_len).saturating_sub(order);
            let end = (j + 1) * part_len - order;
            PartitionStats::of(&residual[start..end])
        })
        .collect();

    // Sums of the cheapest codings' estimates; the smallest partitioning wins.
    let evaluate = |stats: &[PartitionStats]| -> (Vec<PartitionCoding>, u64) {
        let (codings, sizes): (Vec<PartitionCoding>, Vec<u64>) =
            stats.iter().map(PartitionStats::cheapest).unzip();
        (codings, sizes.iter().sum())
    };
    let (codings, estimate) = evaluate(&stats);
    let (mut best_order, mut best_codings, mut best_estimate) = (finest, codings, estimate);
    for p in (0..finest).rev() {
        stats = stats
            .chunks_exact(2)
            .map(|pair| PartitionStats::merge(pair[0], pair[1]))
            .collect();
        let (codings, estimate) = evaluate(&stats);
        // On a tie, fewer partitions: less to write and to read.
        if estimate <= best_estimate {
            (best_order, best_codings, best_estimate) = (p, codings, estimate);
        }
    }
    let plan = RicePlan {
        order: best_order,
        partitions: best_codings,
    };
    let bits = plan.exact_bits(residual, n, order);
    (plan, bits)
}

impl RicePlan {
    /// The residual split into this plan's partitions, each with its coding.
    fn split<'a>(
        &'a self,
        residual: &'a [i32],
        n: usize,
        order: usize,
    ) -> impl Iterator<Item = (PartitionCoding, &'a [i32])> + 'a {
        let part_len = n >> self.order;
        self.partitions.iter().enumerate().map(move |(j, &coding)| {
            let start = (j * part_len).saturating_sub(order);
            let end = ((j + 1) * part_len - order).min(residual.len());
            (coding, &residual[start.min(end)..end])
        })
    }

    /// Exact size in bits of the residual coded by this plan, with the 2-bit coding method and
    /// the 4-bit partition order.
    fn exact_bits(&self, residual: &[i32], n: usize, order: usize) -> u64 {
        let mut bits = 2 + 4;
        for (coding, part) in self.split(residual, n, order) {
            bits += match coding {
                PartitionCoding::Rice(k) => {
                    4 + part
                        .iter()
                        .map(|&r| (zigzag(r) >> k) + 1 + u64::from(k))
                        .sum::<u64>()
                }
                PartitionCoding::Escape(width) => 4 + 5 + part.len() as u64 * u64::from(width),
            };
        }
        bits
    }
}

impl Subframe {
    /// Writes the subframe: header (type and a clear wasted-bits flag), then its data.
    fn write(&self, w: &mut BitWriter) {
        let bps = self.bps;
        match &self.coding {
            Coding::Constant(value) => {
                w.write_subframe_header(0b00_0000);
                w.write_signed(*value, bps);
            }
            Coding::Verbatim(samples) => {
                w.write_subframe_header(0b00_0001);
                for &s in samples {
                    w.write_signed(s, bps);
                }
            }
            Coding::Fixed {
                warmup,
                residual,
                rice,
            } => {
                let order = warmup.len();
                w.write_subframe_header(0b00_1000 | order as u64);
                for &s in warmup {
                    w.write_signed(s, bps);
                }
                w.write(0b00, 2); // residual coding method 0: 4-bit Rice parameters
                w.write(u64::from(rice.order), 4);
                let n = order + residual.len();
                for (coding, part) in rice.split(residual, n, order) {
                    match coding {
                        PartitionCoding::Rice(k) => {
                            w.write(u64::from(k), 4);
                            for &r in part {
                                let u = zigzag(r);
                                w.write_unary(u >> k);
                                w.write(u, k);
                            }
                        }
                        PartitionCoding::Escape(width) => {
                            w.write(ESCAPE_CODE, 4);
                            w.write(u64::from(width), 5);
                            for &r in part {
                                w.write_signed(r, width);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The 4-bit block size code of a frame header, and the value that follows the frame number
/// when the code says "stored at the end of the header" (`(value, bits)`).
fn block_size_code(n: usize) -> (u64, Option<(u64, u32)>) {
    match n {
        192 => (0b0001, None),
        576 | 1152 | 2304 | 4608 => (2 + (n / 576).trailing_zeros() as u64, None),
        256 | 512 | 1024 | 2048 | 4096 | 8192 | 16384 | 32768 => {
            (8 + (n / 256).trailing_zeros() as u64, None)
        }
        0..=256 => (0b0110, Some((n.saturating_sub(1) as u64, 8))),
        _ => (0b0111, Some((n as u64 - 1, 16))),
    }
}

/// The 4-bit sample rate code of a frame header, and the value stored at the end of the header
/// for the uncommon rates. A rate no header code can state gets 0, "see STREAMINFO", which is
/// valid FLAC but outside the streamable subset.
fn sample_rate_code(rate: u32) -> (u64, Option<(u64, u32)>) {
    let rate = u64::from(rate);
    match rate {
        88_200 => (0b0001, None),
        176_400 => (0b0010, None),
        192_000 => (0b0011, None),
        8_000 => (0b0100, None),
        16_000 => (0b0101, None),
        22_050 => (0b0110, None),
        24_000 => (0b0111, None),
        32_000 => (0b1000, None),
        44_100 => (0b1001, None),
        48_000 => (0b1010, None),
        96_000 => (0b1011, None),
        _ if rate % 1000 == 0 && rate / 1000 <= 255 => (0b1100, Some((rate / 1000, 8))),
        _ if rate <= 65_535 => (0b1101, Some((rate, 16))),
        _ if rate % 10 == 0 && rate / 10 <= 65_535 => (0b1110, Some((rate / 10, 16))),
        _ => (0b0000, None),
    }
}

/// The frame number in FLAC's extended UTF-8 coding: 1 byte below 2^7, else a lead byte
/// announcing `m` continuation bytes of 6 bits each, for up to 36 bits.
fn utf8_number(v: u64) -> Vec<u8> {
    if v < 0x80 {
        return vec![v as u8];
    }
    // With m continuation bytes the lead byte keeps 6 - m payload bits: 5m + 6 bits in all.
    let mut m = 1;
    while m < 6 && v >> (5 * m + 6) != 0 {
        m += 1;
    }
    let lead = !(0xFFu8 >> (m + 1)) | (v >> (6 * m)) as u8;
    let mut bytes = vec![lead];
    for i in (0..m).rev() {
        bytes.push(0x80 | ((v >> (6 * i)) & 0x3F) as u8);
    }
    bytes
}

/// CRC-8 of frame headers: polynomial x^8 + x^2 + x + 1, initial value 0.
fn crc8(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0, |crc, &b| CRC8_TABLE[usize::from(crc ^ b)])
}

/// CRC-16 of whole frames: polynomial x^16 + x^15 + x^2 + 1, initial value 0.
fn crc16(bytes: &[u8]) -> u16 {
    bytes.iter().fold(0, |crc, &b| {
        (crc << 8) ^ CRC16_TABLE[usize::from((crc >> 8) as u8 ^ b)]
    })
}

/// CRC-8 (polynomial 0x07) of every byte value, built at compile time.
const CRC8_TABLE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u8;
        let mut bit = 0;
        while bit < 8 {
            c = if c & 0x80 != 0 {
                (c << 1) ^ 0x07
            } else {
                c << 1
            };
            bit += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// CRC-16 (polynomial 0x8005) of every byte value in the high byte, built at compile time.
const CRC16_TABLE: [u16; 256] = {
    let mut table = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = (i as u16) << 8;
        let mut bit = 0;
        while bit < 8 {
            c = if c & 0x8000 != 0 {
                (c << 1) ^ 0x8005
            } else {
                c << 1
            };
            bit += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// Writes bit fields most significant bit first, as FLAC stores them.
#[derive(Default)]
struct BitWriter {
    /// Completed bytes.
    bytes: Vec<u8>,
    /// Pending bits in the low `pending` bits (fewer than 8 between calls).
    acc: u64,
    /// Number of pending bits.
    pending: u32,
}

impl BitWriter {
    /// Appends the low `bits` bits of `value` (`bits` at most 32).
    fn write(&mut self, value: u64, bits: u32) {
        debug_assert!(bits <= 32);
        if bits == 0 {
            return;
        }
        self.acc = (self.acc << bits) | (value & ((1 << bits) - 1));
        self.pending += bits;
        while self.pending >= 8 {
            self.pending -= 8;
            self.bytes.push((self.acc >> self.pending) as u8);
        }
        // Keep only the pending bits so the next shift cannot overflow.
        self.acc &= (1 << self.pending) - 1;
    }

    /// Appends a subframe header: a zero bit, the 6-bit type, and a clear wasted-bits flag.
    /// (Shifting out low zero bits shared by a whole block is not attempted: audio scaled from
    /// floats almost never has them.)
    fn write_subframe_header(&mut self, kind: u64) {
        self.write(0, 1);
        self.write(kind, 6);
        self.write(0, 1);
    }

    /// Appends `value` as a two's-complement field of `bits` bits.
    fn write_signed(&mut self, value: i32, bits: u32) {
        self.write(value as u32 as u64, bits);
    }

    /// Appends `q` zeros and a one: the unary quotient of a Rice code.
    fn write_unary(&mut self, mut q: u64) {
        while q >= 32 {
            self.write(0, 32);
            q -= 32;
        }
        self.write(1, q as u32 + 1);
    }

    /// Pads with zeros to a byte boundary.
    fn align(&mut self) {
        if self.pending > 0 {
            self.write(0, 8 - self.pending);
        }
    }

    /// Bits written so far.
    fn bit_len(&self) -> u64 {
        self.bytes.len() as u64 * 8 + u64::from(self.pending)
    }

    /// The completed bytes (pending bits excluded).
    fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// All bytes, after padding the last one with zeros.
    fn into_bytes(mut self) -> Vec<u8> {
        self.align();
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::super::decode::{decode_audio, DecodeError, DecodeLimits};
    use super::super::{encode_wav, SampleFormat};
    use super::*;

    /// The integers of the S16 WAV of `audio`, per channel: what the FLAC must decode to.
    fn wav_integers(audio: &Audio) -> Vec<Vec<i32>> {
        let bytes = encode_wav(audio, SampleFormat::S16).unwrap();
        let mut reader = hound::WavReader::new(Cursor::new(bytes)).unwrap();
        let interleaved: Vec<i16> = reader.samples::<i16>().map(Result::unwrap).collect();
        let channels = audio.channels.len();
        (0..channels)
            .map(|c| {
                interleaved
                    .iter()
                    .skip(c)
                    .step_by(channels)
                    .map(|&s| i32::from(s))
                    .collect()
            })
            .collect()
    }

    /// Decodes with the crate's own decoder and recovers the integers. Symphonia's FLAC decoder
    /// shifts 16-bit samples into the top of an i32 and converts to f32 by dividing by 2^31, so
    /// every decoded value must be exactly an integer over 32768.
    fn flac_integers(bytes: &[u8]) -> (u32, Vec<Vec<i32>>) {
        let audio = decode_audio(bytes, Some("x.flac"), &DecodeLimits::default()).unwrap();
        let channels = audio
            .channels
            .iter()
            .map(|c| {
                c.iter()
                    .map(|&x| {
                        let s = x * 32768.0;
                        assert_eq!(s, s.round(), "{x} is not a 16-bit sample");
                        s as i32
                    })
                    .collect()
            })
            .collect();
        (audio.sample_rate, channels)
    }

    /// Decodes with symphonia's MD5 check on and says whether it passed.
    fn md5_verifies(bytes: &[u8]) -> bool {
        use symphonia::core::codecs::audio::AudioDecoderOptions;
        use symphonia::core::formats::probe::Hint;
        use symphonia::core::formats::{FormatOptions, TrackType};
        use symphonia::core::io::MediaSourceStream;
        use symphonia::core::meta::MetadataOptions;

        let source = MediaSourceStream::new(Box::new(Cursor::new(bytes)), Default::default());
        let mut format = symphonia::default::get_probe()
            .probe(
                Hint::new().with_extension("flac"),
                source,
                FormatOptions::default(),
                MetadataOptions::default(),
            )
            .unwrap();
        let track = format.first_track_known_codec(TrackType::Audio).unwrap();
        let id = track.id;
        let params = track.codec_params.as_ref().and_then(|p| p.audio()).unwrap();
        let mut decoder = symphonia::default::get_codecs()
            .make_audio_decoder(params, &AudioDecoderOptions::default().verify(true))
            .unwrap();
        while let Ok(Some(packet)) = format.next_packet() {
            if packet.track_id == id {
                decoder.decode(&packet).unwrap();
            }
        }
        decoder.finalize().verify_ok == Some(true)
    }

    /// Encodes, decodes, and checks the integers, rate and MD5; returns the FLAC bytes.
    fn assert_round_trip(audio: &Audio) -> Vec<u8> {
        let flac = encode_flac(audio).unwrap();
        let (rate, decoded) = flac_integers(&flac);
        assert_eq!(rate, audio.sample_rate);
        let expected = wav_integers(audio);
        assert_eq!(decoded.len(), expected.len(), "channel count");
        for (c, (got, want)) in decoded.iter().zip(&expected).enumerate() {
            assert_eq!(got.len(), want.len(), "length of channel {c}");
            if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
                panic!("channel {c} sample {i}: decoded {} != {}", got[i], want[i]);
            }
        }
        assert!(md5_verifies(&flac), "the STREAMINFO MD5 does not match");
        flac
    }

    /// The fields of STREAMINFO, parsed independently of the encoder.
    #[derive(Debug, PartialEq)]
    struct Info {
        min_block: u64,
        max_block: u64,
        min_frame: u64,
        max_frame: u64,
        rate: u64,
        channels: u64,
        bits: u64,
        total: u64,
    }

    fn stream_info_of(bytes: &[u8]) -> Info {
        assert_eq!(&bytes[..4], b"fLaC");
        assert_eq!(
            &bytes[4..8],
            &[0x80, 0, 0, 34],
            "a last STREAMINFO of 34 bytes"
        );
        let b = &bytes[8..42];
        let be = |r: &[u8]| r.iter().fold(0u64, |a, &x| a << 8 | u64::from(x));
        let packed = be(&b[10..18]);
        Info {
            min_block: be(&b[0..2]),
            max_block: be(&b[2..4]),
            min_frame: be(&b[4..7]),
            max_frame: be(&b[7..10]),
            rate: packed >> 44,
            channels: (packed >> 41 & 0x7) + 1,
            bits: (packed >> 36 & 0x1F) + 1,
            total: packed & 0xF_FFFF_FFFF,
        }
    }

    fn sine(hz: f32, rate: u32, len: usize, amp: f32) -> Vec<f32> {
        (0..len)
            .map(|i| amp * (std::f32::consts::TAU * hz * i as f32 / rate as f32).sin())
            .collect()
    }

    /// Deterministic uniform noise in [-amp, amp].
    fn noise(len: usize, seed: u64, amp: f32) -> Vec<f32> {
        let mut s = seed;
        (0..len)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                amp * ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0)
            })
            .collect()
    }

    #[test]
    fn flac_constant_and_silent_mono() {
        let audio = Audio {
            sample_rate: 44_100,
            channels: vec![vec![0.5; 10_000]],
        };
        let flac = assert_round_trip(&audio);
        // Three CONSTANT frames: headers and one sample each.
        assert!(flac.len() < 100, "{} bytes", flac.len());

        // Digital silence: the decoder refuses it as silent, so check the stream itself.
        let silent = Audio {
            sample_rate: 44_100,
            channels: vec![vec![0.0; 5000]],
        };
        let flac = encode_flac(&silent).unwrap();
        let info = stream_info_of(&flac);
        assert_eq!((info.channels, info.bits, info.total), (1, 16, 5000));
        assert_eq!(
            decode_audio(&flac, Some("x.flac"), &DecodeLimits::default()),
            Err(DecodeError::Silent)
        );
        assert!(md5_verifies(&flac));
    }

    #[test]
    fn flac_stereo_sine_round_trips_and_compresses() {
        let rate = 44_100;
        let len = 3 * BLOCK_SIZE + 1000;
        let audio = Audio {
            sample_rate: rate,
            channels: vec![sine(440.0, rate, len, 0.5), sine(660.0, rate, len, 0.3)],
        };
        let flac = assert_round_trip(&audio);
        let wav = encode_wav(&audio, SampleFormat::S16).unwrap();
        let ratio = flac.len() as f64 / wav.len() as f64;
        eprintln!(
            "stereo sine: FLAC {} bytes, WAV {} bytes, ratio {ratio:.3}",
            flac.len(),
            wav.len()
        );
        assert!(ratio < 0.5, "FLAC is {ratio:.3} of the WAV");

        let info = stream_info_of(&flac);
        assert_eq!(
            (info.min_block, info.max_block, info.rate, info.channels),
            (4096, 4096, 44_100, 2)
        );
        assert_eq!((info.bits, info.total), (16, len as u64));
        assert!(0 < info.min_frame && info.min_frame <= info.max_frame);
        assert!(info.max_frame < flac.len() as u64 / 3);
    }

    #[test]
    fn flac_stereo_decorrelation_is_used() {
        // Identical channels: the side channel is all zeros, so a side coding must win.
        let tone = sine(300.0, 48_000, 8000, 0.7);
        let audio = Audio {
            sample_rate: 48_000,
            channels: vec![tone.clone(), tone.clone()],
        };
        let flac = assert_round_trip(&audio);
        let assignment = flac[42 + 3] >> 4;
        assert!((8..=10).contains(&assignment), "assignment {assignment}");
        let mono = encode_flac(&Audio {
            sample_rate: 48_000,
            channels: vec![tone],
        })
        .unwrap();
        assert!(
            flac.len() < mono.len() + 100,
            "{} vs {}",
            flac.len(),
            mono.len()
        );

        // Opposite channels: left - right is twice the signal, which needs the 17th bit; a
        // full-scale signal also exercises clamping.
        let loud: Vec<f32> = sine(200.0, 48_000, 6000, 1.2);
        let inverted: Vec<f32> = loud.iter().map(|x| -x).collect();
        assert_round_trip(&Audio {
            sample_rate: 48_000,
            channels: vec![loud, inverted],
        });
    }

    #[test]
    fn flac_many_channels_and_rates() {
        let len = 2 * BLOCK_SIZE + 5;
        for (rate, channels) in [(32_000, 3), (44_100, 6), (96_000, 8), (11_025, 1)] {
            let signals = (0..channels)
                .map(|c| match c % 3 {
                    0 => sine(100.0 * (c + 1) as f32, rate, len, 0.4),
                    1 => noise(len, c as u64, 0.2),
                    _ => vec![-0.25; len],
                })
                .collect();
            let audio = Audio {
                sample_rate: rate,
                channels: signals,
            };
            let flac = assert_round_trip(&audio);
            let info = stream_info_of(&flac);
            assert_eq!(
                (info.rate, info.channels),
                (u64::from(rate), channels as u64)
            );
        }
        // 65,537 Hz fits no frame header code: the headers defer to STREAMINFO.
        let audio = Audio {
            sample_rate: 65_537,
            channels: vec![sine(1000.0, 65_537, 5000, 0.5)],
        };
        let flac = assert_round_trip(&audio);
        assert_eq!(flac[42 + 2] & 0x0F, 0);
    }

    #[test]
    fn flac_noise_falls_back_to_verbatim() {
        let len = BLOCK_SIZE + 123;
        let audio = Audio {
            sample_rate: 44_100,
            channels: vec![noise(len, 1, 1.0), noise(len, 2, 1.0)],
        };
        let flac = assert_round_trip(&audio);
        let wav = encode_wav(&audio, SampleFormat::S16).unwrap();
        // Full-scale white noise does not compress; VERBATIM keeps the overhead to headers.
        assert!(
            flac.len() <= wav.len() + 64,
            "{} vs {}",
            flac.len(),
            wav.len()
        );

        // Out-of-range and non-finite values are clamped or zeroed as in the WAV.
        let mut wild = noise(3000, 3, 1.0);
        wild[..6].copy_from_slice(&[1.5, -1.5, f32::NAN, 1.0, -1.0, f32::INFINITY]);
        assert_round_trip(&Audio {
            sample_rate: 22_050,
            channels: vec![wild],
        });
    }

    #[test]
    fn flac_odd_lengths() {
        for len in [1, 2, 5, 15, 16, 17, 100, 4095, 4096, 4097, 8191] {
            // A lone sample of a sine at phase 0 would be silent; give it a level.
            let left = if len == 1 {
                vec![0.5]
            } else {
                sine(500.0, 44_100, len, 0.5)
            };
            let audio = Audio {
                sample_rate: 44_100,
                channels: vec![left, noise(len, len as u64, 0.5)],
            };
            let flac = assert_round_trip(&audio);
            assert_eq!(stream_info_of(&flac).total, len as u64);
        }
    }

    #[test]
    fn flac_empty_audio_is_a_valid_stream() {
        let audio = Audio {
            sample_rate: 44_100,
            channels: vec![Vec::new(), Vec::new()],
        };
        let flac = encode_flac(&audio).unwrap();
        assert_eq!(flac.len(), 42);
        let info = stream_info_of(&flac);
        assert_eq!(
            info,
            Info {
                min_block: 4096,
                max_block: 4096,
                min_frame: 0,
                max_frame: 0,
                rate: 44_100,
                channels: 2,
                bits: 16,
                total: 0,
            }
        );
        // The MD5 of no data.
        assert_eq!(
            flac[26..42],
            0xd41d8cd98f00b204e9800998ecf8427e_u128.to_be_bytes()
        );
        // Frameless streams are valid FLAC (libFLAC writes them for empty input), but
        // symphonia 0.6 syncs to a first frame when it opens a stream, so it cannot open one.
        assert!(decode_audio(&flac, Some("x.flac"), &DecodeLimits::default()).is_err());
    }

    #[test]
    fn flac_refuses_what_it_cannot_hold() {
        let audio = |channels: usize, rate: u32| Audio {
            sample_rate: rate,
            channels: vec![vec![0.1; 10]; channels],
        };
        let err = encode_flac(&audio(9, 44_100)).unwrap_err().to_string();
        assert_eq!(
            err,
            "invalid channels: FLAC holds 1 to 8 channels; this audio has 9"
        );
        assert!(encode_flac(&audio(0, 44_100)).is_err());
        assert!(encode_flac(&audio(8, 44_100)).is_ok());
        let err = encode_flac(&audio(1, 0)).unwrap_err().to_string();
        assert!(err.contains("655350"), "{err}");
        assert!(encode_flac(&audio(1, 700_000)).is_err());
        assert!(encode_flac(&audio(1, MAX_SAMPLE_RATE)).is_ok());
        let ragged = Audio {
            sample_rate: 44_100,
            channels: vec![vec![0.1; 10], vec![0.1; 9]],
        };
        assert!(encode_flac(&ragged).is_err());
    }

    #[test]
    fn flac_building_blocks() {
        // The CRC catalogue's check values (CRC-8/SMBUS, CRC-16/UMTS) for "123456789".
        assert_eq!(crc8(b"123456789"), 0xF4);
        assert_eq!(crc16(b"123456789"), 0xFEE8);
        assert_eq!(utf8_number(0), [0x00]);
        assert_eq!(utf8_number(0x7F), [0x7F]);
        assert_eq!(utf8_number(0x80), [0xC2, 0x80]);
        assert_eq!(utf8_number(0x7FF), [0xDF, 0xBF]);
        assert_eq!(utf8_number(0x800), [0xE0, 0xA0, 0x80]);
        assert_eq!(
            utf8_number(0x7FFF_FFFF),
            [0xFD, 0xBF, 0xBF, 0xBF, 0xBF, 0xBF]
        );
        assert_eq!(
            utf8_number((1 << 36) - 1),
            [0xFE, 0xBF, 0xBF, 0xBF, 0xBF, 0xBF, 0xBF]
        );
        assert_eq!(block_size_code(4096), (0b1100, None));
        assert_eq!(block_size_code(192), (0b0001, None));
        assert_eq!(block_size_code(4608), (0b0101, None));
        assert_eq!(block_size_code(100), (0b0110, Some((99, 8))));
        assert_eq!(block_size_code(4097), (0b0111, Some((4096, 16))));
        assert_eq!(sample_rate_code(44_100), (0b1001, None));
        assert_eq!(sample_rate_code(100_000), (0b1100, Some((100, 8))));
        assert_eq!(sample_rate_code(11_025), (0b1101, Some((11_025, 16))));
        assert_eq!(sample_rate_code(352_800), (0b1110, Some((35_280, 16))));
        assert_eq!(sample_rate_code(65_537), (0b0000, None));
        assert_eq!(
            (0..8).map(|u| zigzag(u - 4)).collect::<Vec<_>>(),
            [7, 5, 3, 1, 0, 2, 4, 6]
        );
        assert_eq!(
            [0, -1, 1, -2, 2, 65535, -65536].map(signed_width),
            [0, 1, 2, 2, 3, 17, 17]
        );
    }
}
