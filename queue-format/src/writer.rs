//! Builds valid queue files, laid out as Postfix's cleanup writes them.
//! Tests and benchmarks use it to make synthetic spools; posthold never
//! writes queue files into a live queue.
//!
//! ```
//! use queue_format::writer::Builder;
//! let bytes = Builder::new(1_795_424_399, "sender@example.com")
//!     .recipient("rcpt@example.net")
//!     .header("Subject: hello")
//!     .body_line("body")
//!     .build();
//! assert_eq!(bytes[0], b'C');
//! ```

use crate::rec_type as rt;
use crate::record::{put_record, record_size};

/// Postfix's default `line_length_limit`: longer lines are stored as
/// `L` records of this many bytes followed by an `N`.
pub const LINE_LENGTH_LIMIT: usize = 2048;

/// A recipient to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RcptSpec {
    /// The address.
    pub address: Vec<u8>,
    /// Original recipient (`O`).
    pub original: Option<Vec<u8>>,
    /// DSN NOTIFY flags.
    pub notify: Option<u32>,
    /// DSN ORCPT.
    pub dsn_orcpt: Option<Vec<u8>>,
    /// Written as `D` (done) instead of `R`.
    pub done: bool,
}

/// A queue file under construction.
#[derive(Debug, Clone)]
pub struct Builder {
    arrival: (i64, i64),
    create_time: Option<i64>,
    sender: Vec<u8>,
    fullname: Option<Vec<u8>>,
    attributes: Vec<(Vec<u8>, Vec<u8>)>,
    recipients: Vec<RcptSpec>,
    lines: Vec<Vec<u8>>,
    last_line_unterminated: bool,
    milter_layout: bool,
    line_limit: usize,
    qmgr_flags: u64,
    sendopts: u64,
}

impl Builder {
    /// A message that arrived at `arrival` seconds from `sender`.
    pub fn new(arrival: i64, sender: impl AsRef<[u8]>) -> Builder {
        Builder {
            arrival: (arrival, 0),
            create_time: Some(arrival),
            sender: sender.as_ref().to_vec(),
            fullname: None,
            attributes: vec![(b"rewrite_context".to_vec(), b"local".to_vec())],
            recipients: Vec::new(),
            lines: Vec::new(),
            last_line_unterminated: false,
            milter_layout: false,
            line_limit: LINE_LENGTH_LIMIT,
            qmgr_flags: 0,
            sendopts: 0,
        }
    }

    /// Sets the microseconds of the arrival time.
    pub fn arrival_micros(mut self, usec: i64) -> Builder {
        self.arrival.1 = usec;
        self
    }

    /// Sets (or with `None` omits) the `create_time` attribute.
    pub fn create_time(mut self, t: Option<i64>) -> Builder {
        self.create_time = t;
        self
    }

    /// Adds a sender full name.
    pub fn fullname(mut self, name: impl AsRef<[u8]>) -> Builder {
        self.fullname = Some(name.as_ref().to_vec());
        self
    }

    /// Adds a named attribute.
    pub fn attribute(mut self, name: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Builder {
        self.attributes
            .push((name.as_ref().to_vec(), value.as_ref().to_vec()));
        self
    }

    /// Adds a plain recipient.
    pub fn recipient(self, address: impl AsRef<[u8]>) -> Builder {
        self.recipient_spec(RcptSpec {
            address: address.as_ref().to_vec(),
            original: Some(address.as_ref().to_vec()),
            notify: None,
            dsn_orcpt: None,
            done: false,
        })
    }

    /// Adds a recipient with all its options.
    pub fn recipient_spec(mut self, r: RcptSpec) -> Builder {
        self.recipients.push(r);
        self
    }

    /// Adds a header line (a folded header is several lines).
    pub fn header(mut self, line: impl AsRef<[u8]>) -> Builder {
        self.lines.push(line.as_ref().to_vec());
        self
    }

    /// Adds a body line; the first one is preceded by the empty separator.
    pub fn body_line(mut self, line: impl AsRef<[u8]>) -> Builder {
        if !self.lines.iter().any(|l| l.is_empty()) {
            self.lines.push(Vec::new());
        }
        self.lines.push(line.as_ref().to_vec());
        self
    }

    /// Adds raw content lines as given (no separator logic).
    pub fn content_line(mut self, line: impl AsRef<[u8]>) -> Builder {
        self.lines.push(line.as_ref().to_vec());
        self
    }

    /// Writes the last line without a newline (`L` + empty `N`).
    pub fn unterminated_last_line(mut self, yes: bool) -> Builder {
        self.last_line_unterminated = yes;
        self
    }

    /// Lays the file out as cleanup does with Milters configured: dummy
    /// pointers after the recipients, headers, content and extracted
    /// segment, and padding after short senders and header lines.
    pub fn milter_layout(mut self, yes: bool) -> Builder {
        self.milter_layout = yes;
        self
    }

    /// Sets the line length at which lines are split into `L` records.
    pub fn line_limit(mut self, limit: usize) -> Builder {
        self.line_limit = limit.max(1);
        self
    }

    /// Sets SIZE field 4 (qmgr flags).
    pub fn qmgr_flags(mut self, flags: u64) -> Builder {
        self.qmgr_flags = flags;
        self
    }

    /// Sets SIZE field 6 (sendopts).
    pub fn sendopts(mut self, opts: u64) -> Builder {
        self.sendopts = opts;
        self
    }

    fn pad(out: &mut Vec<u8>, rtype: u8, data_len: usize) {
        // Room for a 15-byte pointer after short data: record + pad = 17.
        if data_len < 15 {
            let pad = 15 - data_len;
            let width = pad.saturating_sub(2).max(1);
            put_record(out, rtype, format!("{:>width$}", 0).as_bytes());
        }
    }

    fn dummy_pointer(out: &mut Vec<u8>) {
        put_record(out, rt::PTR, format!("{:>15}", 0).as_bytes());
    }

    /// The finished queue file.
    pub fn build(&self) -> Vec<u8> {
        let mut out = Vec::new();
        put_record(&mut out, rt::SIZE, &[b'0'; 95]); // patched at the end
        put_record(
            &mut out,
            rt::TIME,
            format!("{} {}", self.arrival.0, self.arrival.1).as_bytes(),
        );
        if let Some(ct) = self.create_time {
            put_record(&mut out, rt::ATTR, format!("create_time={ct}").as_bytes());
        }
        for (n, v) in &self.attributes {
            let mut p = n.clone();
            p.push(b'=');
            p.extend_from_slice(v);
            put_record(&mut out, rt::ATTR, &p);
        }
        if let Some(f) = &self.fullname {
            put_record(&mut out, rt::FULL, f);
        }
        put_record(&mut out, rt::FROM, &self.sender);
        if self.milter_layout {
            Self::pad(&mut out, rt::PTR, self.sender.len());
        }
        for r in &self.recipients {
            if let Some(n) = r.notify {
                put_record(&mut out, rt::ATTR, format!("notify_flags={n}").as_bytes());
            }
            if let Some(o) = &r.dsn_orcpt {
                let mut p = b"dsn_orig_rcpt=".to_vec();
                p.extend_from_slice(o);
                put_record(&mut out, rt::ATTR, &p);
            }
            if let Some(o) = &r.original {
                put_record(&mut out, rt::ORCP, o);
            }
            put_record(
                &mut out,
                if r.done { rt::DONE } else { rt::RCPT },
                &r.address,
            );
        }
        if self.milter_layout {
            Self::dummy_pointer(&mut out);
        }
        put_record(&mut out, rt::MESG, b"");
        let data_offset = out.len();
        let mut in_header = true;
        for (i, line) in self.lines.iter().enumerate() {
            let last = i + 1 == self.lines.len();
            if in_header && line.is_empty() && self.milter_layout {
                Self::dummy_pointer(&mut out);
            }
            if line.is_empty() {
                in_header = false;
            }
            let mut rest: &[u8] = line;
            while rest.len() > self.line_limit {
                put_record(&mut out, rt::CONT, &rest[..self.line_limit]);
                rest = &rest[self.line_limit..];
            }
            if last && self.last_line_unterminated {
                if !rest.is_empty() {
                    put_record(&mut out, rt::CONT, rest);
                }
                put_record(&mut out, rt::NORM, b"");
            } else {
                put_record(&mut out, rt::NORM, rest);
            }
            if in_header && self.milter_layout && line.len() <= self.line_limit {
                Self::pad(&mut out, rt::DTXT, line.len());
            }
        }
        if self.milter_layout {
            Self::dummy_pointer(&mut out);
        }
        let data_size = out.len() - data_offset;
        put_record(&mut out, rt::XTRA, b"");
        if self.milter_layout {
            Self::dummy_pointer(&mut out);
        }
        put_record(&mut out, rt::END, b"");
        let size = format!(
            "{:>15} {:>15} {:>15} {:>15} {:>15} {:>15}",
            data_size,
            data_offset,
            self.recipients.len(),
            self.qmgr_flags,
            data_size,
            self.sendopts
        );
        debug_assert_eq!(size.len(), 95);
        debug_assert_eq!(record_size(95), 97);
        out[2..97].copy_from_slice(size.as_bytes());
        out
    }
}
