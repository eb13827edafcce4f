//! Property tests: whatever the writer builds, the reader reads back, and
//! the reader survives arbitrary bytes.

use std::io::Cursor;

use proptest::prelude::*;
use queue_format::queue_file::{Lines, RecipientState, read_envelope};
use queue_format::reader::Reader;
use queue_format::writer::{Builder, RcptSpec};
use queue_format::{hash_dir, queue_id};

fn bytes_no_nl() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..300)
}

prop_compose! {
    fn rcpt()(addr in "[a-z]{1,12}@[a-z]{1,8}\\.test", notify in proptest::option::of(1u32..16),
              orcpt in proptest::option::of("rfc822;[a-z]{1,8}@x\\.test"), done in any::<bool>()) -> RcptSpec {
        RcptSpec { address: addr.clone().into_bytes(), original: Some(addr.into_bytes()), notify,
                   dsn_orcpt: orcpt.map(String::into_bytes), done }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn writer_then_reader_round_trips(
        arrival in 0i64..4_000_000_000,
        usec in 0i64..1_000_000,
        sender in "([a-z]{1,20}@[a-z]{1,10}\\.test)?",
        rcpts in prop::collection::vec(rcpt(), 1..20),
        headers in prop::collection::vec("[A-Z][a-z-]{0,10}: [ -~]{0,40}", 0..10),
        body in prop::collection::vec(bytes_no_nl(), 0..20),
        long_line in proptest::option::of(prop::collection::vec(b'a'..=b'z', 2049..6000)),
        milter in any::<bool>(),
        unterminated in any::<bool>(),
    ) {
        let mut b = Builder::new(arrival, &sender).arrival_micros(usec).milter_layout(milter);
        for r in &rcpts { b = b.recipient_spec(r.clone()); }
        for h in &headers { b = b.header(h); }
        let mut expected: Vec<Vec<u8>> = headers.iter().map(|h| h.clone().into_bytes()).collect();
        let mut body_lines: Vec<Vec<u8>> = body.iter().map(|l| l.iter().copied().filter(|&c| c != b'\n').collect()).collect();
        if let Some(l) = long_line { body_lines.push(l); }
        for l in &body_lines { b = b.body_line(l); }
        if !body_lines.is_empty() { expected.push(Vec::new()); expected.extend(body_lines.iter().cloned()); }
        let b = b.unterminated_last_line(unterminated && !expected.is_empty());
        let bytes = b.build();

        let mut reader = Reader::new(Cursor::new(&bytes)).unwrap();
        let env = read_envelope(&mut reader).unwrap();
        env.check_complete().unwrap();
        prop_assert_eq!(env.arrival, Some((arrival, usec)));
        prop_assert_eq!(env.create_time, Some(arrival));
        prop_assert_eq!(env.sender.as_deref(), Some(sender.as_bytes()));
        prop_assert_eq!(env.recipients.len(), rcpts.len());
        for (got, want) in env.recipients.iter().zip(&rcpts) {
            prop_assert_eq!(&got.address, &want.address);
            prop_assert_eq!(got.notify, want.notify);
            prop_assert_eq!(&got.dsn_orcpt, &want.dsn_orcpt);
            prop_assert_eq!(got.state, if want.done { RecipientState::Done } else { RecipientState::Todo });
        }
        let mut lines = Lines::new(&mut reader, env.content_offset.unwrap()).unwrap();
        let mut got = Vec::new();
        while let Some(l) = lines.next_line().unwrap() { got.push(l.text); }
        prop_assert_eq!(got, expected);
    }

    #[test]
    fn reader_never_panics_on_garbage(bytes in prop::collection::vec(any::<u8>(), 0..2000)) {
        let mut reader = match Reader::new(Cursor::new(&bytes)) { Ok(r) => r, Err(_) => return Ok(()) };
        if let Ok(env) = read_envelope(&mut reader)
            && let Some(m) = env.content_offset
            && let Ok(mut lines) = Lines::new(&mut reader, m)
        {
            while let Ok(Some(_)) = lines.next_line() {}
        }
    }

    #[test]
    fn queue_ids_round_trip(sec in 0u64..(1u64 << 40), usec in 0u32..1_000_000, inode in 1u64..(1u64 << 48)) {
        let long = queue_id::encode_long(sec, usec, inode);
        prop_assert!(queue_id::is_legal(&long));
        let d = queue_id::decode(&long).unwrap();
        prop_assert_eq!((d.seconds, d.micros, d.inode), (Some(sec), usec, inode));
        let short = queue_id::encode_short(usec, inode);
        let d = queue_id::decode(&short).unwrap();
        prop_assert_eq!((d.seconds, d.micros, d.inode), (None, usec, inode));
        // Both forms hash by the microseconds, to the same directory.
        prop_assert_eq!(hash_dir::hash_chars(&long, 2), hash_dir::hash_chars(&short, 2));
    }
}
