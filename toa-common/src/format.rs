//! The table of accepted (kind, length) option formats.
//!
//! The payload shape is decided by the option length alone (docs/design.md §2):
//! 8 → port + IPv4, 20 → port + IPv6, 7 → version + IPv4, 19 → version + IPv6.
//! The table is a 256-entry array indexed by kind whose bytes are bit sets of
//! accepted shapes, so the eBPF program checks an option with one load.

use core::fmt;

/// What follows `kind, len` in an option of a given length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// `port(2) ipv4(4)`, total length 8.
    PortV4,
    /// `port(2) ipv6(16)`, total length 20.
    PortV6,
    /// `version(1)=1 ipv4(4)`, total length 7 (Alibaba CDN, no port).
    VersionV4,
    /// `version(1)=1 ipv6(16)`, total length 19 (Alibaba CDN, no port).
    VersionV6,
}

impl Shape {
    /// Every shape, in bit order.
    pub const ALL: [Shape; 4] = [Shape::PortV4, Shape::PortV6, Shape::VersionV4, Shape::VersionV6];

    /// The shape of an option whose total length (kind and len bytes included) is `len`.
    #[inline(always)]
    pub const fn from_len(len: usize) -> Option<Shape> {
        match len {
            8 => Some(Shape::PortV4),
            20 => Some(Shape::PortV6),
            7 => Some(Shape::VersionV4),
            19 => Some(Shape::VersionV6),
            _ => None,
        }
    }

    /// The total option length of this shape.
    #[inline(always)]
    pub const fn wire_len(self) -> u8 {
        match self {
            Shape::PortV4 => 8,
            Shape::PortV6 => 20,
            Shape::VersionV4 => 7,
            Shape::VersionV6 => 19,
        }
    }

    /// This shape's bit in a [`Formats`] entry.
    #[inline(always)]
    pub const fn bit(self) -> u8 {
        match self {
            Shape::PortV4 => 1,
            Shape::PortV6 => 2,
            Shape::VersionV4 => 4,
            Shape::VersionV6 => 8,
        }
    }
}

/// One accepted format, written `KIND/LEN` (e.g. `254/8`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Format {
    /// The option kind.
    pub kind: u8,
    /// The payload shape, given by the option length.
    pub shape: Shape,
}

impl Format {
    /// Builds a format from a kind and a total option length.
    pub const fn new(kind: u8, len: u8) -> Result<Format, FormatError> {
        if kind <= 1 {
            return Err(FormatError::ReservedKind(kind));
        }
        match Shape::from_len(len as usize) {
            Some(shape) => Ok(Format { kind, shape }),
            None => Err(FormatError::UnknownLength(len)),
        }
    }

    /// Parses `KIND/LEN`.
    pub fn parse(s: &str) -> Result<Format, FormatError> {
        let (kind, len) = s.trim().split_once('/').ok_or(FormatError::Syntax)?;
        let kind: u8 = kind.trim().parse().map_err(|_| FormatError::Syntax)?;
        let len: u8 = len.trim().parse().map_err(|_| FormatError::Syntax)?;
        Format::new(kind, len)
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind, self.shape.wire_len())
    }
}

/// Why a format was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FormatError {
    /// Not of the form `KIND/LEN` with two numbers from 0 to 255.
    Syntax,
    /// Kinds 0 (end of list) and 1 (no-op) carry no payload.
    ReservedKind(u8),
    /// No known payload shape has this total length.
    UnknownLength(u8),
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FormatError::Syntax => f.write_str("expected KIND/LEN, e.g. 254/8"),
            FormatError::ReservedKind(k) => write!(f, "kind {k} is reserved (0 = EOL, 1 = NOP)"),
            FormatError::UnknownLength(l) => write!(
                f,
                "length {l} has no known payload shape (8 = port+IPv4, 20 = port+IPv6, \
                 7 = version+IPv4, 19 = version+IPv6)"
            ),
        }
    }
}

/// The formats in force when none are configured: `254/8`, `200/8`, `253/20`, `254/20`.
pub const DEFAULT_FORMATS: [Format; 4] = [
    Format { kind: 254, shape: Shape::PortV4 },
    Format { kind: 200, shape: Shape::PortV4 },
    Format { kind: 253, shape: Shape::PortV6 },
    Format { kind: 254, shape: Shape::PortV6 },
];

/// The accepted formats as the eBPF program reads them (in each slot of map `TOA_CONFIG`).
///
/// `shapes[kind]` is the set of [`Shape::bit`]s accepted for that kind; 0 means
/// the kind is not TOA.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Formats {
    /// Accepted shapes per kind.
    pub shapes: [u8; 256],
}

const _: () = assert!(core::mem::size_of::<Formats>() == 256);

impl Formats {
    /// No format accepted.
    pub const EMPTY: Formats = Formats { shapes: [0; 256] };

    /// Builds the table from a list of formats.
    pub fn from_list(list: &[Format]) -> Formats {
        let mut t = Formats::EMPTY;
        for f in list {
            t.insert(*f);
        }
        t
    }

    /// The default table ([`DEFAULT_FORMATS`]).
    pub fn default_table() -> Formats {
        Formats::from_list(&DEFAULT_FORMATS)
    }

    /// Accepts one more format.
    pub fn insert(&mut self, f: Format) {
        self.shapes[f.kind as usize] |= f.shape.bit();
    }

    /// Whether `kind` with total length `len` is accepted.
    #[inline(always)]
    pub fn accepts(&self, kind: u8, len: usize) -> Option<Shape> {
        let bits = self.shapes[kind as usize];
        if bits == 0 {
            return None;
        }
        match Shape::from_len(len) {
            Some(shape) if bits & shape.bit() != 0 => Some(shape),
            _ => None,
        }
    }

    /// Whether any format of this kind is accepted.
    #[inline(always)]
    pub fn knows_kind(&self, kind: u8) -> bool {
        self.shapes[kind as usize] != 0
    }

    /// Calls `f` for every accepted format, in kind then shape order.
    pub fn for_each(&self, mut f: impl FnMut(Format)) {
        for (kind, bits) in self.shapes.iter().enumerate() {
            for shape in Shape::ALL {
                if bits & shape.bit() != 0 {
                    f(Format { kind: kind as u8, shape });
                }
            }
        }
    }
}

#[cfg(feature = "user")]
// SAFETY: plain bytes, no padding.
unsafe impl aya::Pod for Formats {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_formats() {
        let cases = [
            ("254/8", Ok(Format { kind: 254, shape: Shape::PortV4 })),
            (" 253 / 20 ", Ok(Format { kind: 253, shape: Shape::PortV6 })),
            ("28/7", Ok(Format { kind: 28, shape: Shape::VersionV4 })),
            ("28/19", Ok(Format { kind: 28, shape: Shape::VersionV6 })),
            ("254/9", Err(FormatError::UnknownLength(9))),
            ("1/8", Err(FormatError::ReservedKind(1))),
            ("0/8", Err(FormatError::ReservedKind(0))),
            ("254", Err(FormatError::Syntax)),
            ("256/8", Err(FormatError::Syntax)),
            ("x/8", Err(FormatError::Syntax)),
        ];
        for (input, want) in cases {
            assert_eq!(Format::parse(input), want, "input {input:?}");
        }
        let f = Format::parse("200/8").expect("valid");
        let mut s = [0u8; 8];
        let mut w = Cursor { buf: &mut s, at: 0 };
        core::fmt::write(&mut w, format_args!("{f}")).expect("fits");
        let n = w.at;
        assert_eq!(&s[..n], b"200/8");
    }

    struct Cursor<'a> {
        buf: &'a mut [u8],
        at: usize,
    }
    impl core::fmt::Write for Cursor<'_> {
        fn write_str(&mut self, s: &str) -> core::fmt::Result {
            let end = self.at + s.len();
            self.buf.get_mut(self.at..end).ok_or(core::fmt::Error)?.copy_from_slice(s.as_bytes());
            self.at = end;
            Ok(())
        }
    }

    #[test]
    fn default_table_accepts_exactly_the_defaults() {
        let t = Formats::default_table();
        assert_eq!(t.accepts(254, 8), Some(Shape::PortV4));
        assert_eq!(t.accepts(254, 20), Some(Shape::PortV6));
        assert_eq!(t.accepts(200, 8), Some(Shape::PortV4));
        assert_eq!(t.accepts(253, 20), Some(Shape::PortV6));
        assert_eq!(t.accepts(253, 8), None);
        assert_eq!(t.accepts(200, 20), None);
        assert_eq!(t.accepts(28, 7), None);
        assert_eq!(t.accepts(254, 9), None);
        let mut n = 0;
        t.for_each(|_| n += 1);
        assert_eq!(n, 4);
    }
}
