//! Compression of the stored object: none, LZ4 frames or Zstandard frames.
//!
//! The stored object is the standard format of each tool, so that `zstd -d` or `lz4 -d`
//! gives back the exact RDB without this project: LZ4 uses the frame format (the `lz4`
//! CLI's), with a content checksum; Zstandard writes one frame with its content checksum.
//! Both keep memory bounded whatever the dataset size: LZ4 works in 4 MiB blocks and
//! Zstandard's window is at most 8 MiB at the levels accepted here (1–19; the "ultra"
//! levels 20–22 want windows up to 128 MiB and are refused). A decoder refuses windows
//! larger than that, so a crafted object cannot make a restore allocate more.
//!
//! Pure apart from the `std::io` adapters: no files, no sockets.

use std::io::{self, BufRead, Read, Write};

use serde::{Deserialize, Serialize};

/// The compression of a data object, as configuration and manifests name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    /// The plain RDB (what format-1 manifests describe).
    #[default]
    None,
    /// LZ4 frame format (`lz4` CLI compatible): fast, modest ratio; WAL-G's default.
    Lz4,
    /// Zstandard frame format (`zstd` CLI compatible), with a level.
    Zstd,
}

/// The default Zstandard level (the `zstd` CLI's own default).
pub const ZSTD_DEFAULT_LEVEL: i32 = 3;
/// Levels accepted for Zstandard: 19 is the highest whose window stays at 8 MiB.
pub const ZSTD_LEVELS: std::ops::RangeInclusive<i32> = 1..=19;
/// log2 of the largest Zstandard window a decoder accepts (8 MiB).
pub const ZSTD_WINDOW_LOG_MAX: u32 = 23;

impl Codec {
    /// The name used in configuration and manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            Codec::None => "none",
            Codec::Lz4 => "lz4",
            Codec::Zstd => "zstd",
        }
    }

    /// Parses a manifest's `compression` field; `None` for names this agent does not know
    /// (a manifest written by a newer agent).
    pub fn from_name(name: &str) -> Option<Codec> {
        match name {
            "none" => Some(Codec::None),
            "lz4" => Some(Codec::Lz4),
            "zstd" => Some(Codec::Zstd),
            _ => None,
        }
    }

    /// The suffix the data object's name gets (`data.rdb.zst`), the tools' own.
    pub fn suffix(self) -> &'static str {
        match self {
            Codec::None => "",
            Codec::Lz4 => ".lz4",
            Codec::Zstd => ".zst",
        }
    }
}

/// A compressing writer in front of `W`; [`Compressor::finish`] ends the frame and
/// returns `W`.
pub enum Compressor<W: Write> {
    Plain(W),
    Lz4(Box<lz4_flex::frame::FrameEncoder<W>>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> Compressor<W> {
    /// A compressor for `codec`; `level` applies to Zstandard only (checked by the
    /// configuration: [`ZSTD_LEVELS`]).
    pub fn new(codec: Codec, level: i32, out: W) -> io::Result<Self> {
        Ok(match codec {
            Codec::None => Compressor::Plain(out),
            Codec::Lz4 => {
                let info = lz4_flex::frame::FrameInfo::new()
                    .block_size(lz4_flex::frame::BlockSize::Max4MB)
                    .content_checksum(true);
                Compressor::Lz4(Box::new(lz4_flex::frame::FrameEncoder::with_frame_info(
                    info, out,
                )))
            }
            Codec::Zstd => {
                let mut enc = zstd::stream::write::Encoder::new(out, level)?;
                enc.include_checksum(true)?;
                // The level's own window, but never more than the decoders accept.
                enc.set_parameter(zstd::zstd_safe::CParameter::WindowLog(
                    ZSTD_WINDOW_LOG_MAX.min(level_window_log(level)),
                ))?;
                Compressor::Zstd(enc)
            }
        })
    }

    /// Ends the stream (frame trailer and checksum) and returns the inner writer.
    pub fn finish(self) -> io::Result<W> {
        match self {
            Compressor::Plain(w) => Ok(w),
            Compressor::Lz4(e) => e.finish().map_err(io::Error::other),
            Compressor::Zstd(e) => e.finish(),
        }
    }
}

/// The window log Zstandard itself picks for `level` on a large input (levels 1–19).
fn level_window_log(level: i32) -> u32 {
    match level {
        i32::MIN..=2 => 19,
        3..=4 => 21,
        5..=7 => 21,
        8..=16 => 22,
        _ => 23,
    }
}

impl<W: Write> Write for Compressor<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Compressor::Plain(w) => w.write(buf),
            Compressor::Lz4(e) => e.write(buf),
            Compressor::Zstd(e) => e.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Compressor::Plain(w) => w.flush(),
            Compressor::Lz4(e) => e.flush(),
            Compressor::Zstd(e) => e.flush(),
        }
    }
}

/// A reader giving back the raw bytes of a `codec` stream read from `input`. A corrupt
/// frame, a bad checksum or a window over [`ZSTD_WINDOW_LOG_MAX`] is an `InvalidData`
/// (or other) I/O error.
pub fn decompressor<'a, R: BufRead + Send + 'a>(
    codec: Codec,
    input: R,
) -> io::Result<Box<dyn Read + Send + 'a>> {
    Ok(match codec {
        Codec::None => Box::new(input),
        Codec::Lz4 => Box::new(lz4_flex::frame::FrameDecoder::new(input)),
        Codec::Zstd => {
            let mut dec = zstd::stream::read::Decoder::with_buffer(input)?;
            dec.window_log_max(ZSTD_WINDOW_LOG_MAX)?;
            Box::new(dec)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(records: u32) -> Vec<u8> {
        (0..records)
            .flat_map(|i| format!("{{\"user\":{},\"name\":\"n{}\"}}", i, i % 97).into_bytes())
            .collect()
    }

    fn round_trip(codec: Codec, level: i32) -> (Vec<u8>, Vec<u8>) {
        // Level 19 is slow by design: a smaller input proves the same.
        let data = sample(if level > 9 { 20_000 } else { 200_000 });
        let mut c = Compressor::new(codec, level, Vec::new()).unwrap();
        for chunk in data.chunks(100_003) {
            c.write_all(chunk).unwrap();
        }
        let stored = c.finish().unwrap();
        let mut back = Vec::new();
        decompressor(codec, &stored[..])
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data, "{codec:?}");
        (data, stored)
    }

    #[test]
    fn names_and_suffixes_are_the_tools_own() {
        assert_eq!(Codec::Zstd.suffix(), ".zst");
        assert_eq!(Codec::Lz4.suffix(), ".lz4");
        assert_eq!(Codec::None.suffix(), "");
        for c in [Codec::None, Codec::Lz4, Codec::Zstd] {
            assert_eq!(Codec::from_name(c.as_str()), Some(c));
            assert_eq!(
                serde_json::to_value(c).unwrap(),
                serde_json::json!(c.as_str())
            );
        }
        assert_eq!(Codec::from_name("brotli"), None);
    }

    #[test]
    fn every_codec_round_trips_and_compresses() {
        let (_, plain) = round_trip(Codec::None, 0);
        let (_, lz4) = round_trip(Codec::Lz4, 0);
        let (_, zstd) = round_trip(Codec::Zstd, 3);
        let (small, zstd19) = round_trip(Codec::Zstd, 19);
        assert!(lz4.len() < plain.len() / 2);
        assert!(zstd.len() < lz4.len());
        assert!(zstd19.len() < small.len() / 4);
        assert_eq!(&lz4[..4], &[0x04, 0x22, 0x4d, 0x18], "LZ4 frame magic");
        assert_eq!(
            &zstd[..4],
            &[0x28, 0xb5, 0x2f, 0xfd],
            "Zstandard frame magic"
        );
    }

    #[test]
    fn a_flipped_byte_fails_the_frame_checksums() {
        for codec in [Codec::Lz4, Codec::Zstd] {
            let (_, stored) = round_trip(codec, 3);
            for pos in [10, stored.len() / 2, stored.len() - 2] {
                let mut bad = stored.clone();
                bad[pos] ^= 0x01;
                let mut back = Vec::new();
                let r = decompressor(codec, &bad[..]).and_then(|mut d| d.read_to_end(&mut back));
                assert!(r.is_err(), "{codec:?} flip at {pos} went unnoticed");
            }
        }
    }
}
