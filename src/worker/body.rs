//! Request bodies: a static server reads every body only to find where the next request
//! starts, so [`BodySkipper`] walks a `Content-Length` or `chunked` body (RFC 9112 §6.3,
//! §7.1) as it arrives in pieces and keeps nothing of it.
//!
//! The chunked decoder is a byte-level state machine: it consumes all the input it is
//! given (a chunk-size line split across two reads needs no buffering), so the connection
//! never holds more than its read buffer. Choices where RFC 9112 leaves room:
//! - Lines in the chunked framing end in CRLF; a bare LF (which a proxy in front may read
//!   differently, the root of request smuggling) is 400.
//! - Chunk extensions are skipped (any visible character, space or tab); trailer fields
//!   must be `name: value` lines and are discarded; obs-fold in a trailer is 400.
//! - The body's data may be at most `max_body` bytes (413 beyond it); its framing
//!   (chunk-size lines, extensions, trailers) at most `max_framing` bytes (413 beyond it).

use super::request::ErrorKind;

/// How a request's body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    None,
    /// `Content-Length: n`, n > 0.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// The bounds a body is read within.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimits {
    /// Most data bytes (a `Content-Length`, or the chunks' sizes added up).
    pub max_body: u64,
    /// Most bytes of chunked framing: size lines, extensions, trailer section.
    pub max_framing: u64,
}

/// What a call to [`BodySkipper::skip`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// All the input was body: read more.
    More,
    /// The body ended after `used` bytes of the input; what follows is the next request.
    Done {
        /// Bytes of the input that belonged to the body.
        used: usize,
    },
    /// The body can never be accepted: answer with this error and close.
    Invalid(ErrorKind),
}

/// Where a chunked body's decoder stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunked {
    /// Reading chunk-size hex digits (`any` once at least one was read).
    Size {
        any: bool,
    },
    /// Whitespace after the size, before a `;` or the CR.
    AfterSize,
    /// Extensions, up to the CR.
    Extension,
    /// The LF ending a chunk-size line.
    SizeLf,
    /// Inside chunk data.
    Data,
    /// The CR after chunk data, then its LF.
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the final CRLF).
    TrailerStart,
    /// In a trailer field's name (at least one byte of it read), then its value.
    TrailerName,
    TrailerValue,
    /// The LF ending a trailer line, then the LF of the final CRLF.
    TrailerLf,
    FinalLf,
}

/// Skips one request body, fed with whatever arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodySkipper {
    /// Data bytes left in a `Content-Length` body or in the current chunk.
    remaining: u64,
    /// `None` for a `Content-Length` body.
    chunked: Option<Chunked>,
    /// Data bytes seen so far, against `max_body`.
    data_total: u64,
    /// Framing bytes seen so far, against `max_framing`.
    framing_total: u64,
}

impl BodySkipper {
    /// A skipper for a body framed as `framing`; `None` when there is no body.
    pub fn new(framing: Framing) -> Option<BodySkipper> {
        let (remaining, chunked) = match framing {
            Framing::None | Framing::Length(0) => return None,
            Framing::Length(length) => (length, None),
            Framing::Chunked => (0, Some(Chunked::Size { any: false })),
        };
        Some(BodySkipper { remaining, chunked, data_total: 0, framing_total: 0 })
    }

    /// Consumes body bytes from the start of `input`. Unless it says `Done`, all of
    /// `input` was body and the caller may drop it.
    pub fn skip(&mut self, input: &[u8], limits: &BodyLimits) -> Skip {
        match self.chunked {
            None => self.skip_length(input),
            Some(state) => self.skip_chunked(state, input, limits),
        }
    }

    fn skip_length(&mut self, input: &[u8]) -> Skip {
        let taken = take(&mut self.remaining, input.len());
        if self.remaining == 0 {
            Skip::Done { used: taken }
        } else {
            Skip::More
        }
    }

    fn skip_chunked(&mut self, mut state: Chunked, input: &[u8], limits: &BodyLimits) -> Skip {
        let mut at = 0;
        while at < input.len() {
            if state == Chunked::Data {
                at += take(&mut self.remaining, input.len() - at);
                if self.remaining == 0 {
                    state = Chunked::DataCr;
                }
                continue;
            }
            self.framing_total += 1;
            if self.framing_total > limits.max_framing {
                return Skip::Invalid(ErrorKind::PayloadTooLarge);
            }
            match self.framing_byte(state, input[at], limits) {
                Ok(Some(next)) => state = next,
                Ok(None) => return Skip::Done { used: at + 1 },
                Err(kind) => return Skip::Invalid(kind),
            }
            at += 1;
        }
        self.chunked = Some(state);
        Skip::More
    }

    /// The state after one framing byte; `None` when it ended the body.
    fn framing_byte(&mut self, state: Chunked, byte: u8, limits: &BodyLimits) -> Result<Option<Chunked>, ErrorKind> {
        let next = match (state, byte) {
            (Chunked::Size { .. }, _) if byte.is_ascii_hexdigit() => {
                self.add_size_digit(byte, limits)?;
                Chunked::Size { any: true }
            }
            (Chunked::Size { any: true } | Chunked::AfterSize, b' ' | b'\t') => Chunked::AfterSize,
            (Chunked::Size { any: true } | Chunked::AfterSize, b';') => Chunked::Extension,
            (Chunked::Size { any: true } | Chunked::AfterSize | Chunked::Extension, b'\r') => Chunked::SizeLf,
            (Chunked::Extension, _) if is_field_text(byte) => Chunked::Extension,
            (Chunked::SizeLf, b'\n') if self.remaining == 0 => Chunked::TrailerStart,
            (Chunked::SizeLf, b'\n') => {
                self.data_total += self.remaining; // within max_body: checked digit by digit
                Chunked::Data
            }
            (Chunked::DataCr, b'\r') => Chunked::DataLf,
            (Chunked::DataLf, b'\n') => Chunked::Size { any: false },
            (Chunked::TrailerStart, b'\r') => Chunked::FinalLf,
            (Chunked::FinalLf, b'\n') => return Ok(None),
            (Chunked::TrailerStart | Chunked::TrailerName, _) if is_tchar(byte) => Chunked::TrailerName,
            (Chunked::TrailerName, b':') => Chunked::TrailerValue,
            (Chunked::TrailerValue, b'\r') => Chunked::TrailerLf,
            (Chunked::TrailerValue, _) if is_field_text(byte) => Chunked::TrailerValue,
            (Chunked::TrailerLf, b'\n') => Chunked::TrailerStart,
            _ => return Err(ErrorKind::BadRequest),
        };
        Ok(Some(next))
    }

    /// One more hex digit of a chunk size; the chunk may not take the data past `max_body`.
    fn add_size_digit(&mut self, digit: u8, limits: &BodyLimits) -> Result<(), ErrorKind> {
        let value = match digit {
            b'0'..=b'9' => digit - b'0',
            _ => (digit | 0x20) - b'a' + 10,
        };
        let too_large = ErrorKind::PayloadTooLarge;
        self.remaining = self.remaining.checked_mul(16).ok_or(too_large)? + u64::from(value);
        if self.data_total.saturating_add(self.remaining) > limits.max_body {
            return Err(too_large);
        }
        Ok(())
    }
}

/// Takes up to `available` bytes off `remaining`; returns how many.
fn take(remaining: &mut u64, available: usize) -> usize {
    let taken = (*remaining).min(available as u64);
    *remaining -= taken;
    taken as usize
}

/// RFC 9110 §5.6.2 tchar: the characters of a field name.
fn is_tchar(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

/// Visible characters, space, tab and obs-text: what a field value or extension may hold.
fn is_field_text(byte: u8) -> bool {
    byte == b'\t' || byte == b' ' || byte.is_ascii_graphic() || byte >= 0x80
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMITS: BodyLimits = BodyLimits { max_body: 64, max_framing: 256 };

    /// Feeds `input` whole, then says what the skipper made of it.
    fn skip_all(framing: Framing, input: &[u8]) -> Skip {
        let mut skipper = BodySkipper::new(framing).expect("a body");
        skipper.skip(input, &LIMITS)
    }

    /// Feeds `input` in pieces of `piece` bytes; the offset where the body ended, or why
    /// it failed.
    fn skip_in_pieces(framing: Framing, input: &[u8], piece: usize) -> Result<usize, Option<ErrorKind>> {
        let mut skipper = BodySkipper::new(framing).expect("a body");
        let mut at = 0;
        for chunk in input.chunks(piece) {
            match skipper.skip(chunk, &LIMITS) {
                Skip::More => at += chunk.len(),
                Skip::Done { used } => return Ok(at + used),
                Skip::Invalid(kind) => return Err(Some(kind)),
            }
        }
        Err(None)
    }

    #[test]
    fn no_body_needs_no_skipper() {
        assert!(BodySkipper::new(Framing::None).is_none());
        assert!(BodySkipper::new(Framing::Length(0)).is_none());
    }

    #[test]
    fn a_content_length_body_ends_after_its_length_in_any_pieces() {
        let input = b"helloGET / HTTP/1.1\r\n";
        for piece in 1..=input.len() {
            assert_eq!(skip_in_pieces(Framing::Length(5), input, piece), Ok(5), "{piece}");
        }
        assert_eq!(skip_all(Framing::Length(5), b"hel"), Skip::More);
    }

    #[test]
    fn chunked_bodies_end_after_the_last_chunk_and_trailers_in_any_pieces() {
        let bodies: [&[u8]; 7] = [
            b"5\r\nhello\r\n0\r\n\r\n",
            b"0\r\n\r\n",
            b"000\r\n\r\n",
            b"A;name=value;x=\"q s\"\r\n0123456789\r\n1 ; ext\r\nx\r\n0\r\n\r\n",
            b"3\r\nabc\r\n0;last\r\nExpires: never\r\nX-Sum:\t1 2\r\n\r\n",
            b"1f\r\n0123456789012345678901234567890\r\n0\r\n\r\n",
            b"2 \t\r\nab\r\n0 ;x\r\n\r\n",
        ];
        for body in bodies {
            let input = [body, &b"GET / HTTP/1.1\r\n"[..]].concat();
            for piece in 1..=input.len() {
                let ended = skip_in_pieces(Framing::Chunked, &input, piece);
                assert_eq!(ended, Ok(body.len()), "{:?} in pieces of {piece}", body.escape_ascii().to_string());
            }
        }
    }

    #[test]
    fn malformed_chunked_framing_is_400() {
        let bad: [&[u8]; 16] = [
            b"5 6\r\nhello\r\n0\r\n\r\n",
            b"5 x\r\nhello\r\n0\r\n\r\n",
            b"\r\n",
            b"x\r\n",
            b" 5\r\nhello\r\n0\r\n\r\n",
            b";x\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloX\r\n",
            b"5\r\nhello\n0\r\n\r\n",
            b"5\r\nhello\r\n0\r\n\n",
            b"0\r\nNo-Colon\r\n\r\n",
            b"0\r\n: empty name\r\n\r\n",
            b"0\r\n folded: x\r\n\r\n",
            b"0\r\nBad Name: x\r\n\r\n",
            b"1;a\0b\r\nx\r\n0\r\n\r\n",
            b"0\r\nX: a\nb\r\n\r\n",
        ];
        for body in bad {
            let got = skip_in_pieces(Framing::Chunked, body, body.len());
            assert_eq!(got, Err(Some(ErrorKind::BadRequest)), "{:?}", body.escape_ascii().to_string());
        }
    }

    #[test]
    fn chunked_data_past_max_body_is_413_as_soon_as_a_size_says_so() {
        // One chunk over the cap: refused at its size line, before any data arrives.
        assert_eq!(skip_all(Framing::Chunked, b"41"), Skip::Invalid(ErrorKind::PayloadTooLarge));
        assert_eq!(skip_all(Framing::Chunked, b"40\r\n"), Skip::More);
        // Chunks that add up past the cap.
        let many = b"20\r\n01234567890123456789012345678901\r\n20\r\n01234567890123456789012345678901\r\n1\r\n";
        assert_eq!(skip_all(Framing::Chunked, many), Skip::Invalid(ErrorKind::PayloadTooLarge));
        // A size too large for u64.
        let huge = b"ffffffffffffffffff\r\n";
        assert_eq!(skip_all(Framing::Chunked, huge), Skip::Invalid(ErrorKind::PayloadTooLarge));
        // Leading zeros are no data.
        assert_eq!(skip_all(Framing::Chunked, b"0000000040\r\n"), Skip::More);
    }

    #[test]
    fn chunked_framing_past_max_framing_is_413() {
        let long_extension = [&b"1;"[..], &[b'x'; 300], b"\r\n"].concat();
        assert_eq!(skip_all(Framing::Chunked, &long_extension), Skip::Invalid(ErrorKind::PayloadTooLarge));
        let long_trailer = [&b"0\r\nX: "[..], &[b'y'; 300], b"\r\n\r\n"].concat();
        assert_eq!(skip_all(Framing::Chunked, &long_trailer), Skip::Invalid(ErrorKind::PayloadTooLarge));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_and_used_stays_within_the_input(
            input in prop::collection::vec(any::<u8>(), 0..512),
            piece in 1usize..64,
        ) {
            let mut skipper = BodySkipper::new(Framing::Chunked).expect("a body");
            for chunk in input.chunks(piece) {
                match skipper.skip(chunk, &LIMITS) {
                    Skip::More => {}
                    Skip::Done { used } => {
                        prop_assert!(used <= chunk.len());
                        break;
                    }
                    Skip::Invalid(_) => break,
                }
            }
        }
    }
}
