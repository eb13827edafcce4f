//! Rules for held mail, in a TOML file: ordered, first match wins, as
//! header_checks does. Checked by `posthold check-config`.
//!
//! ```toml
//! [settings]
//! horizon = "365d"        # due times further ahead count as bad dates
//! assume_zone = "+0100"   # zone of due times that name none (default: none, a bad date)
//! on_bad_date = "keep"    # keep | release | quarantine (unparsable, empty, too far)
//! requeue_after = "2d"    # held longer: release through maildrop (default: half the lifetime)
//!
//! [[rule]]
//! name = "scheduled"
//! header = "X-Deliver-At" # condition: the header is present (name, case-insensitive)
//! action = "release-at"   # release when the date in `due_header` (default: `header`) is reached
//!
//! [[rule]]
//! name = "spam-test"
//! header = "Subject"
//! header_value = "(?i)^\\[test\\]"   # regex on the (unfolded) value
//! sender = "@example\\.com$"         # regex on the envelope sender
//! recipient = "^abuse@"              # regex, any recipient
//! min_size = 0                       # bytes (SIZE record's message size)
//! max_size = 10000000
//! min_age = "1h"                     # since create_time
//! min_held = "10m"                   # since it was put on hold
//! action = "quarantine"              # release | requeue | expire | quarantine | keep | release-at
//! ```
//!
//! All conditions of a rule must hold. With no rules file, the default is:
//! `X-Deliver-At`, then `Deferred-Delivery`, release at the header's time;
//! everything else stays on hold.

pub mod due;
mod eval;
mod file;
pub mod reason;
mod verdict;

pub use crate::read::message::Facts;
pub use eval::{Eval, Judgement, Rule, Rules};
pub use reason::Reason;
pub use verdict::{Ruling, Verdict};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::{Answer, ScannerKind};

    fn facts() -> Facts {
        Facts {
            headers: vec![
                ("Subject".into(), "[TEST] hello".into()),
                ("X-Deliver-At".into(), "x".into()),
            ],
            sender: "a@example.com".into(),
            recipients: vec!["abuse@example.net".into()],
            size: 500,
            age: 3600,
            held: 60,
        }
    }

    #[test]
    fn first_match_wins_and_all_conditions_count() {
        let r = Rules::parse(
            r#"
            [[rule]]
            name = "big"
            min_size = 1000
            action = "quarantine"
            [[rule]]
            name = "test"
            header = "subject"
            header_value = "(?i)^\\[test\\]"
            sender = "@example\\.com$"
            recipient = "^abuse@"
            min_age = "30m"
            action = "keep"
            [[rule]]
            header = "X-Deliver-At"
            action = "release-at"
            "#,
        )
        .unwrap();
        assert_eq!(r.first_match(&facts()).unwrap().name, "test");
        let mut f = facts();
        f.sender = "b@other.org".into();
        assert_eq!(
            r.first_match(&f).unwrap().verdict,
            Verdict::ReleaseAt("X-Deliver-At".into())
        );
        f.size = 2000;
        assert_eq!(r.first_match(&f).unwrap().name, "big");
    }

    #[test]
    fn bad_files_are_errors_that_name_the_rule() {
        let e = Rules::parse("[[rule]]\nname = \"x\"\naction = \"explode\"\n").unwrap_err();
        assert!(e.contains("x:") && e.contains("explode"), "{e}");
        let e = Rules::parse("[[rule]]\nname = \"y\"\nsender = \"(\"\naction = \"keep\"\n")
            .unwrap_err();
        assert!(e.contains("y: sender"), "{e}");
        assert!(Rules::parse("[[rule]]\naction = \"keep\"\nbogus = 1\n").is_err());
        assert!(Rules::parse("[[rule]]\naction = \"release-at\"\n").is_err());
        assert!(Rules::parse("[settings]\nhorizon = \"soon\"\n").is_err());
    }

    #[test]
    fn scans_are_asked_for_in_order_and_never_skipped() {
        let r = Rules::parse(
            r#"
            [scanner.av]
            type = "clamd"
            address = "/run/clamd.sock"
            [scanner.sa]
            type = "spamd"
            address = "127.0.0.1:783"
            [scanner.ext]
            type = "command"
            argv = ["/bin/true"]
            [[rule]]
            name = "vip"
            sender = "^boss@"
            action = "release"
            [[rule]]
            name = "virus"
            scan = "av"
            action = "quarantine"
            [[rule]]
            name = "spam"
            scan = "sa"
            min_score = 5.0
            action = "quarantine"
            [[rule]]
            name = "ext"
            scan = "ext"
            exit = [1, 2]
            action = "keep"
            [[rule]]
            name = "rest"
            action = "release"
            "#,
        )
        .unwrap();
        let f = facts();
        let (av, sa, ext) = (0, 2, 1); // scanners sorted by name: av, ext, sa
        assert_eq!(r.scanners[av].name, "av");
        assert!(matches!(r.evaluate(&f, &[]), Eval::Scan(i) if i == av));
        let clean = (av, Answer::Virus(None));
        assert!(matches!(r.evaluate(&f, std::slice::from_ref(&clean)), Eval::Scan(i) if i == sa));
        let ham = (
            sa,
            Answer::Spam {
                spam: false,
                score: 4.9,
                threshold: 5.0,
                symbols: vec![],
            },
        );
        assert!(matches!(r.evaluate(&f, &[clean.clone(), ham.clone()]), Eval::Scan(i) if i == ext));
        let done = [
            clean.clone(),
            ham.clone(),
            (ext, Answer::Exit(0, String::new())),
        ];
        assert!(matches!(r.evaluate(&f, &done), Eval::Rule(Some(x)) if x.name == "rest"));
        let named = [clean.clone(), ham, (ext, Answer::Exit(2, String::new()))];
        assert!(matches!(r.evaluate(&f, &named), Eval::Rule(Some(x)) if x.name == "ext"));
        let inf = [(av, Answer::Virus(Some("X".into())))];
        assert!(matches!(r.evaluate(&f, &inf), Eval::Rule(Some(x)) if x.name == "virus"));
        // Too large for clamd: held, never released past the scan.
        let big = [(av, Answer::Oversize(1 << 30))];
        assert!(matches!(r.evaluate(&f, &big), Eval::Hold(_)));
        // The exit codes rules name are known to the scanner; 0 always is.
        assert!(
            matches!(&r.scanners[ext].kind, ScannerKind::Command { named, .. } if named == &[1, 2])
        );
        // A rule before every scan needs none.
        let mut boss = facts();
        boss.sender = "boss@example.com".into();
        assert!(matches!(r.evaluate(&boss, &[]), Eval::Rule(Some(x)) if x.name == "vip"));
        // decide() without scan results never passes a scanning rule.
        assert!(r.first_match(&f).is_none());
        // A code that only a rule not applying to this message names is
        // held, never passed on to the release rule.
        let r = Rules::parse(
            r#"
            [scanner.ext]
            type = "command"
            argv = ["/bin/true"]
            [[rule]]
            name = "lists"
            sender = "^list@"
            scan = "ext"
            exit = [3]
            action = "keep"
            [[rule]]
            name = "bad"
            scan = "ext"
            exit = [1]
            action = "quarantine"
            [[rule]]
            name = "rest"
            action = "release"
            "#,
        )
        .unwrap();
        let three = [(0, Answer::Exit(3, String::new()))];
        assert!(
            matches!(r.evaluate(&f, &three), Eval::Hold(h) if h.to_string().contains("exit=3"))
        );
        let mut list = facts();
        list.sender = "list@example.com".into();
        assert!(matches!(r.evaluate(&list, &three), Eval::Rule(Some(x)) if x.name == "lists"));
        let zero = [(0, Answer::Exit(0, String::new()))];
        assert!(matches!(r.evaluate(&f, &zero), Eval::Rule(Some(x)) if x.name == "rest"));
    }

    #[test]
    fn bad_scanner_settings_are_errors_that_name_them() {
        let bad = [
            ("[scanner.x]\ntype = \"nope\"\n", "scanner x: type"),
            (
                "[scanner.'a\"b']\ntype = \"clamd\"\naddress = \"/s\"\n",
                "names are",
            ),
            ("[scanner.x]\ntype = \"clamd\"\n", "scanner x: address"),
            (
                "[scanner.x]\ntype = \"command\"\nargv = [\"sh\"]\n",
                "absolute path",
            ),
            (
                "[scanner.x]\ntype = \"command\"\nargv = [\"/bin/x\"]\nuser = \"no-such-user-here\"\n",
                "no such user",
            ),
            (
                "[scanner.x]\ntype = \"clamd\"\naddress = \"/s\"\nargv = [\"/bin/x\"]\n",
                "not a setting",
            ),
            (
                "[scanner.x]\ntype = \"spamd\"\naddress = \"h:1\"\ntimeout = \"0s\"\n",
                "timeout",
            ),
            (
                "[scanner.x]\ntype = \"spamd\"\naddress = \"h:1\"\nconcurrency = 0\n",
                "concurrency",
            ),
            (
                "[[rule]]\nscan = \"ghost\"\naction = \"keep\"\n",
                "no [scanner.ghost]",
            ),
            ("[[rule]]\nexit = [1]\naction = \"keep\"\n", "need scan"),
            (
                "[scanner.x]\ntype = \"command\"\nargv = [\"/bin/x\"]\n[[rule]]\nscan = \"x\"\naction = \"keep\"\n",
                "exit",
            ),
            (
                "[scanner.x]\ntype = \"command\"\nargv = [\"/bin/x\"]\n[[rule]]\nscan = \"x\"\nexit = [75]\naction = \"release\"\n",
                "EX_TEMPFAIL",
            ),
            (
                "[scanner.x]\ntype = \"spamd\"\naddress = \"h:1\"\ncommand = \"CHECK\"\n[[rule]]\nscan = \"x\"\nsymbol = \"A\"\naction = \"keep\"\n",
                "CHECK",
            ),
            (
                "[scanner.x]\ntype = \"clamd\"\naddress = \"/s\"\n[[rule]]\nscan = \"x\"\nmin_score = 1.0\naction = \"keep\"\n",
                "is clamd",
            ),
        ];
        for (text, want) in bad {
            let e = Rules::parse(text).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn default_rules_schedule_on_due_headers_only() {
        let r = Rules::default_rules();
        assert_eq!(
            r.first_match(&facts()).unwrap().verdict,
            Verdict::ReleaseAt("X-Deliver-At".into())
        );
        let f = Facts::default();
        assert!(r.first_match(&f).is_none());
    }

    fn due(headers: &[(&str, &str)], rules: &Rules, now: i64) -> Ruling {
        let f = Facts {
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            ..Facts::default()
        };
        match rules.judge(&f, &[], now) {
            Judgement::Ruled(r) => r,
            Judgement::Scan(_) => panic!("no scanners here"),
        }
    }

    // Issue "never deliver early": a zone-less time is a bad date unless
    // the rules name the zone; of several due headers the latest wins.
    #[test]
    fn due_dates_are_never_early() {
        let now = 1_795_000_000; // before 2026-11-23
        let t = 1_795_425_600; // 2026-11-23 09:20:00 UTC
        let r = Rules::default_rules();
        let zoneless = due(&[("X-Deliver-At", "2026-11-23 09:20:00")], &r, now);
        assert_eq!(zoneless.verdict, Verdict::Keep);
        assert_eq!(zoneless.due, None);
        assert!(
            matches!(zoneless.reason, Reason::NoZone { .. }),
            "{:?}",
            zoneless.reason
        );
        assert!(
            zoneless
                .reason
                .to_string()
                .starts_with("reason=no-zone, rule=x-deliver-at")
        );
        let west = Rules::parse(
            "[settings]\nassume_zone = \"-05:00\"\n[[rule]]\nheader = \"X-Deliver-At\"\naction = \"release-at\"\n",
        )
        .unwrap();
        let r5 = due(&[("X-Deliver-At", "2026-11-23 09:20:00")], &west, now);
        assert_eq!(r5.due, Some(t + 5 * 3600), "09:20 at -05:00 is 14:20 UTC");
        // Past, then future: the future one.
        let two = due(
            &[
                ("X-Deliver-At", "Mon, 23 Nov 2026 09:20:00 +0000"),
                ("X-Deliver-At", "Mon, 23 Nov 2026 12:00:00 +0000"),
            ],
            &r,
            now,
        );
        assert_eq!(two.due, Some(t + 9600));
        // Across header names too, either order.
        for hs in [
            [
                ("Deferred-Delivery", "Mon, 23 Nov 2026 12:00:00 +0000"),
                ("X-Deliver-At", "Mon, 23 Nov 2026 09:20:00 +0000"),
            ],
            [
                ("X-Deliver-At", "Mon, 23 Nov 2026 09:20:00 +0000"),
                ("Deferred-Delivery", "Mon, 23 Nov 2026 12:00:00 +0000"),
            ],
        ] {
            let r2 = due(&hs, &r, now);
            assert_eq!(r2.due, Some(t + 9600), "{hs:?}");
        }
        // One bad value among good ones: a bad date, never the good one.
        let bad = due(
            &[
                ("X-Deliver-At", "Mon, 23 Nov 2026 09:20:00 +0000"),
                ("X-Deliver-At", "soon"),
            ],
            &r,
            now,
        );
        assert_eq!((bad.verdict, bad.due), (Verdict::Keep, None));
        assert!(Rules::parse("[settings]\nassume_zone = \"Mars/Olympus\"\n").is_err());
        assert!(Rules::parse("[settings]\nassume_zone = \"+1500\"\n").is_err());
        assert!(Rules::parse("[settings]\nassume_zone = \"UTC\"\n").is_ok());
    }

    // Issue "senders cannot skip scanning": a release chosen by a header or
    // the sender still passes the scan rules, unless the rule says
    // `unscanned = true`.
    #[test]
    fn releases_pass_the_scan_rules_unless_a_rule_says_unscanned() {
        let text = |unscanned: &str| {
            format!(
                r#"
                [scanner.av]
                type = "command"
                argv = ["/bin/av"]
                [[rule]]
                name = "scheduled"
                header = "X-Deliver-At"
                action = "release-at"
                {unscanned}
                [[rule]]
                name = "trusted"
                sender = "@example\\.com$"
                action = "release"
                [[rule]]
                name = "virus"
                scan = "av"
                exit = [1]
                action = "quarantine"
                [[rule]]
                name = "rest"
                action = "release"
                "#
            )
        };
        let r = Rules::parse(&text("")).unwrap();
        let now = 1_795_500_000;
        let past = Facts {
            headers: vec![(
                "X-Deliver-At".into(),
                "Mon, 23 Nov 2026 09:20:00 +0000".into(),
            )],
            ..Facts::default()
        };
        // Due: the scan runs first.
        assert!(matches!(r.judge(&past, &[], now), Judgement::Scan(0)));
        let infected = [(0, Answer::Exit(1, String::new()))];
        let clean = [(0, Answer::Exit(0, String::new()))];
        match r.judge(&past, &infected, now) {
            Judgement::Ruled(x) => assert_eq!(x.verdict, Verdict::Quarantine),
            j => panic!("{j:?}"),
        }
        match r.judge(&past, &clean, now) {
            Judgement::Ruled(x) => {
                assert_eq!((x.verdict.name(), x.due.is_some()), ("release-at", true))
            }
            j => panic!("{j:?}"),
        }
        // Not due yet: scheduled without a scan; the scan comes at the due time.
        let future = Facts {
            headers: vec![(
                "X-Deliver-At".into(),
                "Mon, 23 Nov 2026 09:20:00 +0000".into(),
            )],
            ..Facts::default()
        };
        match r.judge(&future, &[], 1_795_000_000) {
            Judgement::Ruled(x) => assert_eq!(x.due, Some(1_795_425_600)),
            j => panic!("{j:?}"),
        }
        // A trusted sender is scanned too.
        let trusted = Facts {
            sender: "boss@example.com".into(),
            ..Facts::default()
        };
        assert!(matches!(r.judge(&trusted, &[], now), Judgement::Scan(0)));
        // unscanned = true: released without a scan.
        let u = Rules::parse(&text("unscanned = true")).unwrap();
        match u.judge(&past, &[], now) {
            Judgement::Ruled(x) => assert_eq!(x.verdict.name(), "release-at"),
            j => panic!("{j:?}"),
        }
        // Without scanners nothing changes.
        let plain = Rules::default_rules();
        assert!(matches!(plain.judge(&past, &[], now), Judgement::Ruled(_)));
    }
}
