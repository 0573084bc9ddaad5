//! Output: human tables by default, or JSON/YAML for scripts.

use comfy_table::presets::NOTHING;
use comfy_table::{Cell, Table};
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

pub fn error_chain(e: &anyhow::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = c.source();
    }
    if let Some(kumo_client::ClientError::Api {
        allowed_actions,
        field,
        ..
    }) = e.downcast_ref()
    {
        if let Some(f) = field {
            if !s.contains(f.as_str()) {
                s.push_str(&format!(" (field {f})"));
            }
        }
        if !allowed_actions.is_empty() && !s.contains("allowed:") {
            s.push_str(&format!(
                "\nallowed actions: {}",
                allowed_actions.join(", ")
            ));
        }
    }
    s
}

/// Prints `value` as JSON or YAML, or as a table built by `table`.
pub fn emit<T: Serialize>(
    format: Format,
    value: &T,
    table: impl FnOnce(&T) -> Table,
) -> anyhow::Result<()> {
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(value)?),
        Format::Yaml => print!("{}", serde_yaml::to_string(value)?),
        Format::Table => println!("{}", table(value)),
    }
    Ok(())
}

pub fn table(header: &[&str], rows: Vec<Vec<String>>) -> Table {
    let mut t = Table::new();
    t.load_preset(NOTHING);
    t.set_header(header.iter().map(Cell::new));
    for r in rows {
        t.add_row(r);
    }
    t
}

/// Two columns, field and value, for `show` commands.
pub fn fields(rows: Vec<(&str, String)>) -> Table {
    let mut t = Table::new();
    t.load_preset(NOTHING);
    for (k, v) in rows {
        t.add_row(vec![Cell::new(k), Cell::new(v)]);
    }
    t
}

pub fn mib(m: u64) -> String {
    if m >= 1024 && m.is_multiple_of(1024) {
        format!("{} GiB", m / 1024)
    } else if m >= 1024 {
        format!("{:.1} GiB", m as f64 / 1024.0)
    } else {
        format!("{m} MiB")
    }
}

pub fn time(ms: i64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil-from-days (Howard Hinnant), to print UTC without a date crate.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_utc_times() {
        assert_eq!(super::time(0), "1970-01-01 00:00:00");
        assert_eq!(super::time(1_700_000_000_000), "2023-11-14 22:13:20");
    }
}
