//! Record type bytes, their names as `postcat` prints them, and the sets of
//! types each queue file segment may hold.
//!
//! The byte values and labels are facts about the on-disk format of Postfix
//! 3.x queue files (see `shared/postfix-facts.md` §1.2).

/// First record, written by cleanup: six right-aligned decimal fields.
pub const SIZE: u8 = b'C';
/// Arrival time, `<sec> <usec>`.
pub const TIME: u8 = b'T';
/// Create time, letter form of `A create_time=`.
pub const CTIME: u8 = b'c';
/// Sender full name.
pub const FULL: u8 = b'F';
/// Content inspector transport.
pub const INSP: u8 = b'I';
/// Content filter outside the content segment; partial line inside it.
pub const FILT: u8 = b'L';
/// Partial (continued) content line: same byte as [`FILT`].
pub const CONT: u8 = b'L';
/// Envelope sender; empty payload is the null sender.
pub const FROM: u8 = b'S';
/// Recipient already delivered.
pub const DONE: u8 = b'D';
/// Recipient still to do.
pub const RCPT: u8 = b'R';
/// Original recipient, precedes its `R`.
pub const ORCP: u8 = b'O';
/// Recipient cancelled by a Milter.
pub const DRCP: u8 = b'/';
/// Next delay warning time.
pub const WARN: u8 = b'W';
/// `name=value` attribute.
pub const ATTR: u8 = b'A';
/// Killed record.
pub const KILL: u8 = b'K';
/// Redirect target.
pub const RDR: u8 = b'>';
/// Cleanup flags (cleanup IPC only).
pub const FLGS: u8 = b'f';
/// Cleanup delay (cleanup IPC only).
pub const DELAY: u8 = b'd';
/// Start of the message content.
pub const MESG: u8 = b'M';
/// Complete content line, newline implied.
pub const NORM: u8 = b'N';
/// Padding.
pub const DTXT: u8 = b'w';
/// Start of the extracted segment.
pub const XTRA: u8 = b'X';
/// Return-Receipt-To, from headers.
pub const RRTO: u8 = b'r';
/// Errors-To, from headers.
pub const ERTO: u8 = b'e';
/// Priority.
pub const PRIO: u8 = b'P';
/// Pointer to another offset; `0` is a dummy.
pub const PTR: u8 = b'p';
/// VERP delimiters.
pub const VERP: u8 = b'V';
/// DSN RET, letter form.
pub const DSN_RET: u8 = b'<';
/// DSN ENVID, letter form.
pub const DSN_ENVID: u8 = b'i';
/// DSN ORCPT, letter form.
pub const DSN_ORCPT: u8 = b'o';
/// DSN NOTIFY, letter form.
pub const DSN_NOTIFY: u8 = b'n';
/// Milter count (cleanup IPC only).
pub const MILT_COUNT: u8 = b'm';
/// End of the queue file; required.
pub const END: u8 = b'E';

/// Types allowed in the envelope segment.
pub const ENVELOPE: &[u8] = b"MCTcFILSDRO/WVA>K<ion";
/// Types allowed in the content segment.
pub const CONTENT: &[u8] = b"XLNw";
/// Types allowed in the extracted segment.
pub const EXTRACT: &[u8] = b"EDRO/PreAFIL>Kon";

/// The name Postfix's `rec_type_name()` gives a record type; `postcat` prints
/// it before the payload.
pub fn name(t: u8) -> &'static str {
    match t {
        SIZE => "message_size",
        TIME => "message_arrival_time",
        CTIME => "queue_file_create_time",
        FULL => "sender_fullname",
        INSP => "content_inspector",
        FILT => "content_filter",
        FROM => "sender",
        DONE => "done_recipient",
        DRCP => "canceled_recipient",
        RCPT => "recipient",
        ORCP => "original_recipient",
        WARN => "warning_message_time",
        ATTR => "named_attribute",
        PTR => "pointer_record",
        KILL => "killed_record",
        MESG => "message_content",
        NORM => "regular_text",
        DTXT => "padding",
        XTRA => "extracted_info",
        RRTO => "return_receipt",
        ERTO => "errors_to",
        PRIO => "priority",
        VERP => "verp_delimiters",
        END => "message_end",
        RDR => "redirect_to",
        FLGS => "flags",
        DSN_RET => "dsn_return_flags",
        DSN_ENVID => "dsn_envelope_id",
        DSN_ORCPT => "dsn_original_recipient",
        DSN_NOTIFY => "dsn_notify_flags",
        _ => "unknown_record_type",
    }
}

/// Whether `t` is a record type Postfix 3.x defines.
pub fn is_known(t: u8) -> bool {
    matches!(t, DELAY | MILT_COUNT) || name(t) != "unknown_record_type"
}

/// Attribute names (from `A name=value`) that have letter-form aliases.
pub fn alias_attr_name(t: u8) -> Option<&'static str> {
    match t {
        CTIME => Some("create_time"),
        DSN_RET => Some("ret_flags"),
        DSN_ENVID => Some("envelope_id"),
        DSN_ORCPT => Some("dsn_orig_rcpt"),
        DSN_NOTIFY => Some("notify_flags"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_known_and_unknown_types() {
        assert_eq!(name(b'C'), "message_size");
        assert_eq!(name(b'w'), "padding");
        assert_eq!(name(b'm'), "unknown_record_type");
        assert_eq!(name(0), "unknown_record_type");
        assert!(is_known(b'm'));
        assert!(!is_known(0));
        assert!(!is_known(b'Z'));
    }
}
