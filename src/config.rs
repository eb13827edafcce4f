//! Postfix settings, read the way `postconf` reports them.
//!
//! posthold never parses main.cf itself: it runs `postconf -x` (with
//! `-c CONFIG_DIR` when given) and takes the expanded values, so defaults,
//! `$name` references and compatibility levels are exactly Postfix's.
//!
//! Errors (exit 2): no `postconf` found, a configuration directory Postfix
//! cannot read, a queue directory that is not a Postfix queue directory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::Fatal;

/// The settings posthold reads.
pub const SETTINGS: &[&str] = &[
    "queue_directory",
    "hash_queue_names",
    "hash_queue_depth",
    "enable_long_queue_ids",
    "mail_owner",
    "setgid_group",
    "maximal_queue_lifetime",
    "bounce_queue_lifetime",
    "empty_address_recipient",
    "line_length_limit",
    "smtputf8_enable",
    "duplicate_filter_limit",
    "queue_service_name",
    "pickup_service_name",
];

/// The message queues, in the order `postqueue -j` lists them.
pub const SHOWQ_QUEUES: &[&str] = &["maildrop", "active", "incoming", "deferred", "hold"];

/// The queues `postcat -q` searches, in its order.
pub const POSTCAT_QUEUES: &[&str] = &[
    "maildrop", "incoming", "active", "deferred", "hold", "saved",
];

/// Postfix settings that posthold uses.
#[derive(Debug, Clone)]
pub struct Config {
    /// The configuration directory given with `-c`, if any.
    pub config_dir: Option<PathBuf>,
    /// `queue_directory`.
    pub queue_directory: PathBuf,
    /// `hash_queue_names`.
    pub hash_queue_names: Vec<String>,
    /// `hash_queue_depth`.
    pub hash_queue_depth: usize,
    /// `enable_long_queue_ids`.
    pub enable_long_queue_ids: bool,
    /// `mail_owner`.
    pub mail_owner: String,
    /// `maximal_queue_lifetime` in seconds.
    pub maximal_queue_lifetime: u64,
    /// `bounce_queue_lifetime` in seconds.
    pub bounce_queue_lifetime: u64,
    /// `empty_address_recipient`: how the null sender is shown.
    pub empty_address_recipient: String,
    /// `smtputf8_enable`: whether UTF-8 is printable in listings.
    pub smtputf8_enable: bool,
    /// `duplicate_filter_limit`: how many defer-log recipients showq
    /// remembers to avoid listing them twice.
    pub duplicate_filter_limit: usize,
    /// `queue_service_name`: qmgr's socket in `public/`.
    pub queue_service_name: String,
    /// `pickup_service_name`: pickup's socket in `public/`.
    pub pickup_service_name: String,
}

/// Parses a Postfix time value (`300s`, `5d`, `1w`, bare = `default_unit`).
pub fn parse_time(value: &str, default_unit: char) -> Option<u64> {
    let v = value.trim();
    let (num, unit) = match v.chars().last()? {
        c if c.is_ascii_digit() => (v, default_unit),
        c => (&v[..v.len() - c.len_utf8()], c),
    };
    let n: u64 = num.parse().ok()?;
    let mult = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86400,
        'w' => 7 * 86400,
        _ => return None,
    };
    // Capped: no duration a setting or an argument names is longer than
    // [`MAX_TIME`], so that adding it to a clock never overflows.
    Some(n.saturating_mul(mult).min(MAX_TIME))
}

/// The longest duration posthold takes from a setting or an argument: 100
/// years, in seconds. Longer values are taken as this.
pub const MAX_TIME: u64 = 100 * 366 * 86400;

fn parse_bool(v: &str) -> bool {
    v.trim().eq_ignore_ascii_case("yes") || v.trim().eq_ignore_ascii_case("true")
}

/// Parses `postconf` output lines of the form `name = value`.
pub fn parse_postconf(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| {
            let (n, v) = l.split_once(" =")?;
            Some((n.trim().to_string(), v.trim().to_string()))
        })
        .collect()
}

impl Config {
    /// Reads the settings with `postconf`, then applies a queue-directory
    /// override, then checks that the queue directory is one.
    pub fn load(config_dir: Option<&Path>, queue_override: Option<&Path>) -> Result<Config, Fatal> {
        let mut cmd = Command::new(postconf_path());
        if let Some(dir) = config_dir {
            if !dir.join("main.cf").is_file() {
                return Err(Fatal::config(format!(
                    "{}: not a Postfix configuration directory (no readable main.cf)",
                    dir.display()
                )));
            }
            cmd.arg("-c").arg(dir);
        }
        cmd.arg("-x").args(SETTINGS);
        let out = cmd.output().map_err(|e| {
            Fatal::config(format!(
                "cannot run postconf ({e}): is Postfix installed? (set POSTHOLD_POSTCONF to its path)"
            ))
        })?;
        if !out.status.success() {
            return Err(Fatal::config(format!(
                "postconf failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let map = parse_postconf(&String::from_utf8_lossy(&out.stdout));
        let get = |name: &str| -> Result<&str, Fatal> {
            map.get(name)
                .map(String::as_str)
                .ok_or_else(|| Fatal::config(format!("postconf did not report {name}")))
        };
        let time = |name: &str| -> Result<u64, Fatal> {
            let v = get(name)?;
            parse_time(v, 'd').ok_or_else(|| Fatal::config(format!("{name}: bad time value {v:?}")))
        };
        let depth: usize = get("hash_queue_depth")?
            .parse()
            .map_err(|_| Fatal::config("hash_queue_depth: not a number"))?;
        let cfg = Config {
            config_dir: config_dir.map(Path::to_path_buf),
            queue_directory: match queue_override {
                Some(q) => q.to_path_buf(),
                None => PathBuf::from(get("queue_directory")?),
            },
            hash_queue_names: get("hash_queue_names")?
                .split(|c: char| c == ',' || c.is_whitespace())
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
            hash_queue_depth: depth,
            enable_long_queue_ids: parse_bool(get("enable_long_queue_ids")?),
            mail_owner: get("mail_owner")?.to_string(),
            maximal_queue_lifetime: time("maximal_queue_lifetime")?,
            bounce_queue_lifetime: time("bounce_queue_lifetime")?,
            empty_address_recipient: get("empty_address_recipient")?.to_string(),
            smtputf8_enable: parse_bool(get("smtputf8_enable")?),
            duplicate_filter_limit: get("duplicate_filter_limit")?.parse().unwrap_or(1000),
            queue_service_name: get("queue_service_name")?.to_string(),
            pickup_service_name: get("pickup_service_name")?.to_string(),
        };
        cfg.check_queue_directory()?;
        Ok(cfg)
    }

    /// A queue directory is one when it holds Postfix's message queues.
    pub fn check_queue_directory(&self) -> Result<(), Fatal> {
        let q = &self.queue_directory;
        if !q.is_dir() {
            return Err(Fatal::config(format!(
                "{}: queue directory does not exist",
                q.display()
            )));
        }
        let missing: Vec<&str> = ["incoming", "active", "deferred", "hold"]
            .into_iter()
            .filter(|d| !q.join(d).is_dir())
            .collect();
        if !missing.is_empty() {
            return Err(Fatal::config(format!(
                "{}: not a Postfix queue directory (missing {})",
                q.display(),
                missing.join(", ")
            )));
        }
        Ok(())
    }

    /// Whether `queue` is hashed.
    pub fn is_hashed(&self, queue: &str) -> bool {
        self.hash_queue_names.iter().any(|q| q == queue)
    }

    /// Path of `id` in `queue`, relative to the queue directory.
    pub fn queue_path(&self, queue: &str, id: &str) -> String {
        queue_format::hash_dir::queue_path(queue, id, self.is_hashed(queue), self.hash_queue_depth)
    }
}

pub(crate) fn postconf_path() -> PathBuf {
    std::env::var_os("POSTHOLD_POSTCONF")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            ["/usr/sbin/postconf", "/usr/local/sbin/postconf"]
                .iter()
                .map(PathBuf::from)
                .find(|p| p.exists())
                .unwrap_or_else(|| PathBuf::from("postconf"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_units() {
        assert_eq!(parse_time("5d", 'd'), Some(432000));
        assert_eq!(parse_time("300s", 'd'), Some(300));
        assert_eq!(parse_time("2", 'd'), Some(172800));
        assert_eq!(parse_time("1w", 'd'), Some(604800));
        assert_eq!(parse_time("x", 'd'), None);
        assert_eq!(parse_time("", 'd'), None);
        assert_eq!(parse_time("18000000000000000000s", 's'), Some(MAX_TIME));
        assert_eq!(parse_time("99999999999999999w", 's'), Some(MAX_TIME));
    }

    #[test]
    fn postconf_lines() {
        let m = parse_postconf("a = b\nhash_queue_names = deferred, defer\nempty = \n");
        assert_eq!(m["a"], "b");
        assert_eq!(m["hash_queue_names"], "deferred, defer");
        assert_eq!(m["empty"], "");
    }
}
