//! Human-readable output: an aligned text table or a Markdown table of the records, and the
//! ratio table of `--compare`.

use super::record::{Ratio, Record};

/// Column headers and each record's cells.
fn rows(records: &[Record], profile: bool) -> (Vec<String>, Vec<Vec<String>>) {
    let mut head: Vec<String> = [
        "model",
        "dtype",
        "dev",
        "p",
        "n",
        "b",
        "TTFT ms",
        "prefill tok/s",
        "decode tok/s",
        "TPOT p50 ms",
        "TPOT p90 ms",
        "batch tok/s",
        "RSS MB",
        "dev MB",
        "GB/s/step",
        "BW util",
    ]
    .map(String::from)
    .to_vec();
    if profile {
        head.extend(["tok ms", "prefill ms", "decode ms", "sample ms", "detok ms"].map(String::from));
    }
    let spread = |s: &super::stats::Spread, prec: usize| {
        format!("{:.prec$} ({:.prec$}–{:.prec$})", s.median, s.min, s.max)
    };
    let opt = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.1}"));
    let body = records
        .iter()
        .map(|r| {
            let mut row = vec![
                r.model.clone(),
                r.dtype.clone(),
                r.device.clone(),
                r.prompt_tokens.to_string(),
                r.gen_tokens.to_string(),
                r.batch.to_string(),
                spread(&r.ttft_ms, 1),
                spread(&r.prefill_tok_s, 1),
                spread(&r.decode_tok_s, 2),
                format!("{:.1}", r.tpot_ms_p50),
                format!("{:.1}", r.tpot_ms_p90),
                spread(&r.batch_tok_s, 2),
                format!("{:.0}", r.peak_rss_mb),
                r.device_mem_mb.map_or("n/a".into(), |m| format!("{m:.0}")),
                format!("{:.1}", r.decode_gbs),
                format!("{:.0}%", r.bandwidth_util * 100.0),
            ];
            if profile {
                match &r.profile {
                    Some(p) => row.extend([
                        opt(p.tokenize_ms),
                        format!("{:.1}", p.prefill_ms),
                        format!("{:.1}", p.decode_ms),
                        format!("{:.1}", p.sampling_ms),
                        opt(p.detokenize_ms),
                    ]),
                    None => row.extend(std::iter::repeat_n("n/a".to_string(), 5)),
                }
            }
            row
        })
        .collect();
    (head, body)
}

/// An aligned text table: text columns left-aligned, numeric columns right-aligned.
pub fn table(head: &[String], body: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..head.len())
        .map(|c| {
            body.iter().map(|r| r[c].chars().count()).chain([head[c].chars().count()]).max().unwrap_or(0)
        })
        .collect();
    // a column is numeric (right-aligned, header included) when any of its cells is a number
    let numeric: Vec<bool> = (0..head.len())
        .map(|c| body.iter().any(|r| r[c].starts_with(|ch: char| ch.is_ascii_digit())))
        .collect();
    let line = |cells: &[String]| {
        let mut out = String::new();
        for (c, cell) in cells.iter().enumerate() {
            let pad = widths[c] - cell.chars().count();
            if c > 0 {
                out.push_str("  ");
            }
            if numeric[c] {
                out.push_str(&" ".repeat(pad));
                out.push_str(cell);
            } else {
                out.push_str(cell);
                out.push_str(&" ".repeat(pad));
            }
        }
        out.trim_end().to_string() + "\n"
    };
    let mut out = line(head);
    for row in body {
        out.push_str(&line(row));
    }
    out
}

/// A Markdown table.
pub fn markdown(head: &[String], body: &[Vec<String>]) -> String {
    let mut out = format!("| {} |\n", head.join(" | "));
    out.push_str(&format!("|{}\n", "---|".repeat(head.len())));
    for row in body {
        out.push_str(&format!("| {} |\n", row.join(" | ")));
    }
    out
}

/// The records as an aligned table or Markdown. Cells with a spread read `median (min–max)`.
pub fn records(records: &[Record], profile: bool, as_markdown: bool) -> String {
    let (head, body) = rows(records, profile);
    if as_markdown {
        markdown(&head, &body)
    } else {
        table(&head, &body)
    }
}

/// The `--compare` table: B ÷ A per configuration.
pub fn ratios(ratios: &[Ratio], as_markdown: bool) -> String {
    let head = ["configuration", "TTFT", "prefill", "decode", "TPOT p50", "batch tok/s", "RSS"]
        .map(String::from)
        .to_vec();
    let body: Vec<Vec<String>> = ratios
        .iter()
        .map(|r| {
            let mut row = vec![r.key.clone()];
            row.extend([r.ttft, r.prefill, r.decode, r.tpot, r.batch, r.rss].map(|x| format!("{x:.3}x")));
            row
        })
        .collect();
    if as_markdown {
        markdown(&head, &body)
    } else {
        table(&head, &body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::record::tests::record;

    #[test]
    fn table_columns_align() {
        let text = records(&[record(1, 10.0), record(4, 8.5)], true, false);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(
            lines[0].starts_with("model") && lines[0].contains("BW util") && lines[0].contains("detok ms")
        );
        // right-aligned numeric columns end at the same place as their header
        let end = lines[0].find("TTFT ms").unwrap() + "TTFT ms".len();
        let row: String = lines[1].chars().take(end).collect();
        assert!(row.ends_with(')') && !lines[1].chars().nth(end).unwrap().is_ascii_digit(), "{text}");
        let md = records(&[record(1, 10.0)], false, true);
        assert!(md.starts_with("| model |") && md.lines().nth(1).unwrap().starts_with("|---|"));
    }
}
