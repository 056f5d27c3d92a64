//! A decompression bomb: a FLAC file of about 1 MB that decodes to hours of many-channel
//! audio, written frame by frame (every subframe CONSTANT) so the test never holds the
//! decoded signal itself.

/// Frames of 4096 samples per channel.
const BLOCK: u64 = 4096;

/// A FLAC stream of `seconds` of a constant level on `channels` channels (at most 8) at
/// 192 kHz, 16-bit. `declare_length` writes the total sample count into STREAMINFO; without
/// it the length is "unknown", so only counting while decoding can catch it.
pub(crate) fn flac_bomb(seconds: u64, channels: u8, declare_length: bool) -> Vec<u8> {
    assert!((1..=8).contains(&channels));
    let rate = 192_000u64;
    let frames = seconds * rate / BLOCK;
    let total = frames * BLOCK;
    let mut out = b"fLaC".to_vec();
    // The last (and only) metadata block: STREAMINFO, 34 bytes.
    out.extend([0x80, 0, 0, 34]);
    out.extend((BLOCK as u16).to_be_bytes());
    out.extend((BLOCK as u16).to_be_bytes());
    out.extend([0u8; 6]); // frame sizes unknown
    let declared = if declare_length { total } else { 0 };
    let packed = (rate << 44) | (u64::from(channels - 1) << 41) | (15 << 36) | declared;
    out.extend(packed.to_be_bytes());
    out.extend([0u8; 16]); // no MD5
    for n in 0..frames {
        let start = out.len();
        // Sync, fixed blocking; 4096 samples, 192 kHz; independent channels, 16 bits.
        out.extend([0xFF, 0xF8, 0xC3, ((channels - 1) << 4) | (0b100 << 1)]);
        out.extend(utf8_number(n));
        out.push(crc8(&out[start..]));
        for _ in 0..channels {
            // CONSTANT subframe, no wasted bits, then the level: half of full scale.
            out.extend([0x00, 0x40, 0x00]);
        }
        let crc = crc16(&out[start..]);
        out.extend(crc.to_be_bytes());
    }
    out
}

/// FLAC's UTF-8-like coding of a frame number.
fn utf8_number(n: u64) -> Vec<u8> {
    match n {
        0..=0x7F => vec![n as u8],
        0x80..=0x7FF => vec![0xC0 | (n >> 6) as u8, 0x80 | (n & 0x3F) as u8],
        0x800..=0xFFFF => vec![
            0xE0 | (n >> 12) as u8,
            0x80 | ((n >> 6) & 0x3F) as u8,
            0x80 | (n & 0x3F) as u8,
        ],
        _ => vec![
            0xF0 | (n >> 18) as u8,
            0x80 | ((n >> 12) & 0x3F) as u8,
            0x80 | ((n >> 6) & 0x3F) as u8,
            0x80 | (n & 0x3F) as u8,
        ],
    }
}

/// CRC-8, polynomial 0x07, of a frame header.
fn crc8(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |mut crc, &b| {
        crc ^= b;
        for _ in 0..8 {
            crc = if crc & 0x80 != 0 {
                (crc << 1) ^ 0x07
            } else {
                crc << 1
            };
        }
        crc
    })
}

/// CRC-16, polynomial 0x8005, of a whole frame.
fn crc16(bytes: &[u8]) -> u16 {
    bytes.iter().fold(0u16, |mut crc, &b| {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x8005
            } else {
                crc << 1
            };
        }
        crc
    })
}
