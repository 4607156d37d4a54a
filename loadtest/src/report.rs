//! `shardmq-loadtest report`: reads the JSON files of several runs and lays them side by
//! side, one row per scenario label and one column per broker, so a suite run against
//! shardmq and its peers reads as one table (plain text or Markdown), one SVG chart and
//! one JSON summary. The figures are read defensively: a field missing from a run, or
//! a run from an older generator, prints `-` rather than failing the report.
//!
//! A *variant* is the reference broker run another way (`shardmq-1`: the same binary
//! with one shard). It is not a peer: it never counts as the best peer. Each variant
//! gets a scaling table instead, the reference's figures divided by the variant's on
//! the same load.

use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Compares the result files of several runs, the reference broker against its best peer.
#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    /// Result files written by `--json`, any number of scenarios and brokers.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Broker name whose figures are divided by the best of the others.
    #[arg(long, value_name = "NAME", default_value = "shardmq")]
    pub reference: String,
    /// A broker that is the reference run another way (fewer shards, other flags), not
    /// a peer: it is left out of the best-peer ratios and compared with the reference
    /// in a scaling table. Repeatable. Brokers named `<reference>-...` (such as
    /// `shardmq-1`) are variants without this option.
    #[arg(long, value_name = "NAME")]
    pub variant: Vec<String>,
    /// Write a self-contained SVG with throughput and p99 latency bar charts.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// Write the table's figures and ratios as one JSON document.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Print the table as Markdown instead of aligned plain text.
    #[arg(long)]
    pub markdown: bool,
}

/// Reads every file, prints the table, and writes the SVG and JSON summary if asked.
pub fn run(args: &ReportArgs) -> Result<(), String> {
    let mut runs = Vec::with_capacity(args.files.len());
    for path in &args.files {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let doc: Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        if is_summary(&doc) {
            eprintln!("report: {}: a summary, not a run; skipped", path.display());
            continue;
        }
        if !doc.is_object() {
            return Err(format!("{}: not a JSON object", path.display()));
        }
        if let Some(v) = doc.get("version").and_then(Value::as_u64) {
            if v != 1 {
                eprintln!(
                    "report: {}: schema version {v}, expected 1; reading what matches",
                    path.display()
                );
            }
        }
        runs.push((path.clone(), doc));
    }
    if runs.is_empty() {
        return Err("no run results to report".into());
    }
    let report = Report::build(runs, &args.reference, &args.variant);
    if report.reference_runs == 0 {
        eprintln!(
            "report: no run has broker_name {:?}; ratios are left out",
            report.reference
        );
    }
    print!("{}", report.table(args.markdown));
    if let Some(path) = &args.svg {
        write_file(path, &report.svg())?;
    }
    if let Some(path) = &args.json {
        let mut text =
            serde_json::to_string_pretty(&report.summary()).map_err(|e| e.to_string())?;
        text.push('\n');
        write_file(path, &text)?;
    }
    Ok(())
}

fn write_file(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

/// A file this command wrote itself (`--json`), which a shell glob over the results
/// folder picks up along with the runs.
fn is_summary(doc: &Value) -> bool {
    doc.get("rows").is_some() && doc.get("reference").is_some() && doc.get("label").is_none()
}

/// Which way a figure improves, and so which peer is the best one to compare with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Better {
    Higher,
    Lower,
}

/// How a figure is printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Unit {
    /// Per-second rates and counts: `1.23M`.
    Count,
    /// Three significant digits: microseconds, CPU time per message, cores.
    Plain,
    /// A count that should read exactly: `19000`.
    Exact,
    /// Memory: `1.76 KiB`, `118 MiB`.
    Bytes,
}

/// One figure of a run, found at a JSON pointer into its result file.
#[derive(Clone, Copy, Debug)]
struct Metric {
    /// Key in the JSON summary.
    key: &'static str,
    /// Name in the table.
    name: &'static str,
    pointer: &'static str,
    unit: Unit,
}

const DELIVERED: Metric = Metric {
    key: "delivered_per_s",
    name: "delivered msgs/s",
    pointer: "/delivered_per_s",
    unit: Unit::Count,
};
const P99: Metric = Metric {
    key: "p99_us",
    name: "p99 µs",
    pointer: "/latency_us/p99",
    unit: Unit::Plain,
};
const P50: Metric = Metric {
    key: "p50_us",
    name: "p50 µs",
    pointer: "/latency_us/p50",
    unit: Unit::Plain,
};
const CPU_PER_MSG: Metric = Metric {
    key: "cpu_us_per_msg",
    name: "broker CPU µs/msg",
    pointer: "/broker_process/cpu_us_per_msg",
    unit: Unit::Plain,
};
const RSS_PER_CONN: Metric = Metric {
    key: "rss_per_conn_bytes",
    name: "broker RSS/conn",
    pointer: "/conns/rss_per_conn_bytes",
    unit: Unit::Bytes,
};
const CONNECT_RATE: Metric = Metric {
    key: "connect_per_s",
    name: "connects/s",
    pointer: "/conns/connect_per_s",
    unit: Unit::Count,
};
const CPU_PER_CONNECT: Metric = Metric {
    key: "broker_cpu_us_per_connect",
    name: "broker CPU µs/connect",
    pointer: "/conns/broker_cpu_us_per_connect",
    unit: Unit::Plain,
};
const CONNECTED: Metric = Metric {
    key: "connected",
    name: "connected",
    pointer: "/conns/connected",
    unit: Unit::Exact,
};
const BROKER_RSS: Metric = Metric {
    key: "rss_bytes",
    name: "broker RSS at end",
    pointer: "/broker_process/rss_bytes",
    unit: Unit::Bytes,
};
const BROKER_CORES: Metric = Metric {
    key: "broker_cpu_cores",
    name: "broker cores",
    pointer: "/broker_process/cpu_cores",
    unit: Unit::Plain,
};
const LOADTEST_CORES: Metric = Metric {
    key: "loadtest_cpu_cores",
    name: "loadtest cores",
    pointer: "/loadtest/cpu_cores",
    unit: Unit::Plain,
};

/// The figures shown for a scenario, its key figure first, each with the direction in
/// which the reference is compared with its best peer (`None`: shown, not compared).
fn metrics_for(scenario: &str) -> &'static [(Metric, Option<Better>)] {
    use Better::{Higher, Lower};
    match scenario {
        "latency" => &[
            (P99, Some(Lower)),
            (P50, None),
            (DELIVERED, None),
            (CPU_PER_MSG, Some(Lower)),
            (BROKER_RSS, None),
            (LOADTEST_CORES, None),
        ],
        "conns" | "storm" => &[
            (RSS_PER_CONN, Some(Lower)),
            (CONNECT_RATE, Some(Higher)),
            (CPU_PER_CONNECT, Some(Lower)),
            (CONNECTED, None),
            (BROKER_RSS, None),
            (LOADTEST_CORES, None),
        ],
        // p2p, fanin, fanout, and anything newer than this table: throughput first.
        _ => &[
            (DELIVERED, Some(Higher)),
            (P99, Some(Lower)),
            (CPU_PER_MSG, Some(Lower)),
            (BROKER_RSS, None),
            (LOADTEST_CORES, None),
        ],
    }
}

/// The figures of a scenario in the scaling table, reference against variant, each with
/// the direction in which it improves (`None`: shown, not divided). Broker and generator
/// cores are there to explain a ratio: both share the machine's cores.
fn scaling_metrics_for(scenario: &str) -> &'static [(Metric, Option<Better>)] {
    use Better::{Higher, Lower};
    match scenario {
        "latency" => &[
            (P99, Some(Lower)),
            (P50, None),
            (CPU_PER_MSG, Some(Lower)),
            (BROKER_CORES, None),
            (LOADTEST_CORES, None),
        ],
        "conns" | "storm" => &[
            (CONNECT_RATE, Some(Higher)),
            (RSS_PER_CONN, Some(Lower)),
            (CPU_PER_CONNECT, Some(Lower)),
            (CONNECTED, None),
            (LOADTEST_CORES, None),
        ],
        _ => &[
            (DELIVERED, Some(Higher)),
            (CPU_PER_MSG, Some(Lower)),
            (P99, None),
            (BROKER_CORES, None),
            (LOADTEST_CORES, None),
        ],
    }
}

/// A load generator busier than this share of its threads may itself be the bottleneck.
const SATURATED_SHARE: f64 = 0.9;

/// The reference's figure over the best peer's, and that peer's name.
#[derive(Clone, Debug, PartialEq)]
struct Ratio {
    value: f64,
    peer: String,
}

/// One scenario label: its runs by broker name.
#[derive(Debug)]
struct Row {
    label: String,
    scenario: String,
    runs: HashMap<String, Value>,
}

/// Runs grouped by label (rows, first seen first) and broker (columns, reference first).
#[derive(Debug)]
struct Report {
    reference: String,
    reference_runs: usize,
    /// The reference, then its peers: the columns of the main table.
    brokers: Vec<String>,
    /// Variants of the reference, first seen first: the scaling table's columns.
    variants: Vec<String>,
    rows: Vec<Row>,
}

fn text_at<'a>(doc: &'a Value, pointer: &str) -> Option<&'a str> {
    doc.pointer(pointer).and_then(Value::as_str)
}

fn num_at(doc: &Value, pointer: &str) -> Option<f64> {
    doc.pointer(pointer).and_then(Value::as_f64)
}

/// The number as the run wrote it (so counts stay integers), or null.
fn json_num_at(doc: &Value, pointer: &str) -> Value {
    match doc.pointer(pointer) {
        Some(v @ Value::Number(_)) => v.clone(),
        _ => Value::Null,
    }
}

impl Report {
    /// Groups runs; a second run of the same label and broker replaces the first.
    /// `variants` (and any broker named `<reference>-...`) are variants, not peers.
    fn build(runs: Vec<(PathBuf, Value)>, reference: &str, variants: &[String]) -> Report {
        let mut brokers: Vec<String> = vec![reference.to_string()];
        let mut found_variants: Vec<String> = Vec::new();
        let variant_prefix = format!("{reference}-");
        let is_variant = |b: &str| {
            b != reference && (variants.iter().any(|v| v == b) || b.starts_with(&variant_prefix))
        };
        let mut rows: Vec<Row> = Vec::new();
        let mut reference_runs = 0;
        for (path, doc) in runs {
            let label = text_at(&doc, "/label")
                .map(str::to_string)
                .unwrap_or_else(|| {
                    path.file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_else(|| "?".into())
                });
            // A 5.0 run is never mixed into a 3.1.1 row: a label that does not say
            // which protocol it ran gets "-v5" (runs from before --protocol are 3.1.1).
            let label = if doc.get("protocol_level").and_then(Value::as_u64) == Some(5)
                && !label.contains("v5")
            {
                format!("{label}-v5")
            } else {
                label
            };
            let broker = text_at(&doc, "/broker_name").unwrap_or("?").to_string();
            let scenario = text_at(&doc, "/scenario").unwrap_or("?").to_string();
            if broker == reference {
                reference_runs += 1;
            }
            if is_variant(&broker) {
                if !found_variants.contains(&broker) {
                    found_variants.push(broker.clone());
                }
            } else if !brokers.contains(&broker) {
                brokers.push(broker.clone());
            }
            let row = match rows.iter().position(|r| r.label == label) {
                Some(i) => &mut rows[i],
                None => {
                    rows.push(Row {
                        label: label.clone(),
                        scenario,
                        runs: HashMap::new(),
                    });
                    rows.last_mut().expect("just pushed")
                }
            };
            if row.runs.insert(broker.clone(), doc).is_some() {
                eprintln!(
                    "report: {}: a second run of {label} on {broker}; it replaces the first",
                    path.display()
                );
            }
        }
        Report {
            reference: reference.to_string(),
            reference_runs,
            brokers,
            variants: found_variants,
            rows,
        }
    }

    fn peers(&self) -> impl Iterator<Item = &String> {
        self.brokers.iter().filter(move |b| **b != self.reference)
    }

    /// The reference's figure over the best peer's: the highest for a `Higher` figure,
    /// the lowest for a `Lower` one. `None` when either side is missing or the
    /// divisor is zero.
    fn ratio(&self, row: &Row, metric: &Metric, better: Better) -> Option<Ratio> {
        let reference = num_at(row.runs.get(&self.reference)?, metric.pointer)?;
        let mut best: Option<(f64, &String)> = None;
        for peer in self.peers() {
            let Some(v) = row.runs.get(peer).and_then(|d| num_at(d, metric.pointer)) else {
                continue;
            };
            let wins = match (best, better) {
                (None, _) => true,
                (Some((b, _)), Better::Higher) => v > b,
                (Some((b, _)), Better::Lower) => v < b,
            };
            if wins {
                best = Some((v, peer));
            }
        }
        let (best, peer) = best?;
        (best > 0.0).then(|| Ratio {
            value: reference / best,
            peer: peer.clone(),
        })
    }

    /// The reference's figure over the variant's, on the same scenario. `None` when
    /// either is missing or the variant's is zero.
    fn scaling_ratio(&self, row: &Row, metric: &Metric, variant: &str) -> Option<f64> {
        let reference = num_at(row.runs.get(&self.reference)?, metric.pointer)?;
        let variant = num_at(row.runs.get(variant)?, metric.pointer)?;
        (variant > 0.0).then(|| reference / variant)
    }

    /// One table line per figure of `metrics` that some column has (the first always):
    /// the figure's name, one cell per column, then `ratios(metric, better)`. Sets
    /// `saturated` when a generator cell gets the `*` mark.
    fn figure_lines(
        &self,
        row: &Row,
        metrics: &[(Metric, Option<Better>)],
        columns: &[String],
        saturated: &mut bool,
        ratios: impl Fn(&Metric, Option<Better>) -> Vec<String>,
    ) -> Vec<Vec<String>> {
        let mut lines = Vec::new();
        for (i, (metric, better)) in metrics.iter().enumerate() {
            let values: Vec<Option<f64>> = columns
                .iter()
                .map(|b| row.runs.get(b).and_then(|d| num_at(d, metric.pointer)))
                .collect();
            // The key figure always has a line, so a missing one shows as `-`.
            if i > 0 && values.iter().all(Option::is_none) {
                continue;
            }
            let name = match better {
                Some(Better::Higher) => format!("{} ↑", metric.name),
                Some(Better::Lower) => format!("{} ↓", metric.name),
                None => metric.name.to_string(),
            };
            let mut line = vec![String::new(), name];
            for (broker, v) in columns.iter().zip(values) {
                let doc = row.runs.get(broker);
                let mut cell = v.map_or_else(|| "-".to_string(), |v| fmt_value(v, metric.unit));
                if metric.key == LOADTEST_CORES.key {
                    if let (Some(cores), Some(threads)) =
                        (v, doc.and_then(|d| num_at(d, "/loadtest/threads")))
                    {
                        cell = format!("{cell} of {threads}");
                        if threads > 0.0 && cores >= SATURATED_SHARE * threads {
                            cell.push_str(" *");
                            *saturated = true;
                        }
                    }
                }
                if i == 0 && doc.and_then(|d| d.get("ok")).and_then(Value::as_bool) == Some(false) {
                    cell.push_str(" !");
                }
                line.push(cell);
            }
            line.extend(ratios(metric, *better));
            lines.push(line);
        }
        lines
    }

    /// Plain text (aligned columns) or Markdown, with notes on ratios, a saturated
    /// generator and failed runs below.
    fn table(&self, markdown: bool) -> String {
        let mut header = vec!["scenario".to_string(), "figure".to_string()];
        header.extend(self.brokers.iter().cloned());
        header.push(format!("{} / best peer", self.reference));
        let mut lines: Vec<Vec<String>> = Vec::new();
        let mut saturated = false;
        let mut failures: Vec<String> = Vec::new();
        for row in &self.rows {
            let first_line = lines.len();
            lines.extend(self.figure_lines(
                row,
                metrics_for(&row.scenario),
                &self.brokers,
                &mut saturated,
                |metric, better| {
                    vec![better.and_then(|b| self.ratio(row, metric, b)).map_or_else(
                        || "-".to_string(),
                        |r| format!("{:.2}x ({})", r.value, r.peer),
                    )]
                },
            ));
            if let Some(line) = self.integrity_line(row, &self.brokers, 1) {
                lines.push(line);
            }
            lines[first_line][0] = row.label.clone();
            for broker in self.brokers.iter().chain(&self.variants) {
                let Some(doc) = row.runs.get(broker) else {
                    continue;
                };
                if doc.get("ok").and_then(Value::as_bool) == Some(false) {
                    let why: Vec<&str> = doc
                        .get("failures")
                        .and_then(Value::as_array)
                        .map(|a| a.iter().filter_map(Value::as_str).collect())
                        .unwrap_or_default();
                    let why = if why.is_empty() {
                        "no reason given".into()
                    } else {
                        why.join("; ")
                    };
                    failures.push(format!("{} on {broker}: {why}", row.label));
                }
            }
        }

        let render = if markdown {
            render_markdown
        } else {
            render_plain
        };
        let mut out = render(&header, &lines);
        let bullet = if markdown { "- " } else { "" };
        out.push('\n');
        let _ = writeln!(
            out,
            "{bullet}ratio: {} divided by the best other broker; ↑ higher is better, ↓ lower is better.",
            self.reference
        );
        if !self.variants.is_empty() {
            let _ = writeln!(
                out,
                "{bullet}{} are {} run another way, not peers: see the scaling table below.",
                self.variants.join(", "),
                self.reference
            );
        }
        if saturated {
            let _ = writeln!(
                out,
                "{bullet}* the load generator used at least {:.0}% of its threads: that figure may be its limit, not the broker's.",
                SATURATED_SHARE * 100.0
            );
        }
        if !failures.is_empty() {
            let _ = writeln!(out, "{bullet}! failed runs:");
            for f in failures {
                let _ = writeln!(out, "{}{f}", if markdown { "  - " } else { "  " });
            }
        }
        let mut saturated = false;
        if let Some(lines) = self.scaling_lines(&mut saturated) {
            let _ = writeln!(
                out,
                "\nScaling: {} against {}, the same broker run another way, on the same load.\n",
                self.reference,
                self.variants.join(", ")
            );
            let mut header = vec!["scenario".to_string(), "figure".to_string()];
            header.push(self.reference.clone());
            header.extend(self.variants.iter().cloned());
            for v in &self.variants {
                header.push(format!("{} / {v}", self.reference));
            }
            out.push_str(&render(&header, &lines));
            out.push('\n');
            let _ = writeln!(
                out,
                "{bullet}scaling ratio: {} divided by the variant; above 1 on ↑ or below 1 on ↓ is a gain for {}.",
                self.reference, self.reference
            );
            if saturated {
                let _ = writeln!(
                    out,
                    "{bullet}* as above: the load generator used at least {:.0}% of its threads.",
                    SATURATED_SHARE * 100.0
                );
            }
        }
        out
    }

    /// The scaling table's lines: for each scenario that some variant ran, the
    /// reference's and the variants' figures and the reference over each variant.
    /// `None` when no variant ran anything.
    fn scaling_lines(&self, saturated: &mut bool) -> Option<Vec<Vec<String>>> {
        let mut columns = vec![self.reference.clone()];
        columns.extend(self.variants.iter().cloned());
        let mut lines: Vec<Vec<String>> = Vec::new();
        for row in &self.rows {
            if !self.variants.iter().any(|v| row.runs.contains_key(v)) {
                continue;
            }
            let first_line = lines.len();
            lines.extend(self.figure_lines(
                row,
                scaling_metrics_for(&row.scenario),
                &columns,
                saturated,
                |metric, better| {
                    self.variants
                        .iter()
                        .map(|v| match better {
                            Some(_) => self
                                .scaling_ratio(row, metric, v)
                                .map_or_else(|| "-".to_string(), |r| format!("{r:.2}x")),
                            None => "-".to_string(),
                        })
                        .collect()
                },
            ));
            if let Some(line) = self.integrity_line(row, &columns, self.variants.len()) {
                lines.push(line);
            }
            lines[first_line][0] = row.label.clone();
        }
        (!lines.is_empty()).then_some(lines)
    }

    /// `lost/duplicated/reordered` per column, only when some column has a non-zero
    /// one; `ratio_cells` dashes fill the ratio columns.
    fn integrity_line(
        &self,
        row: &Row,
        columns: &[String],
        ratio_cells: usize,
    ) -> Option<Vec<String>> {
        const KEYS: [&str; 3] = ["/lost", "/duplicated", "/reordered"];
        let any = columns
            .iter()
            .filter_map(|b| row.runs.get(b))
            .any(|d| KEYS.iter().any(|k| num_at(d, k).is_some_and(|v| v != 0.0)));
        if !any {
            return None;
        }
        let mut line = vec![String::new(), "lost/dup/reordered".to_string()];
        for broker in columns {
            line.push(match row.runs.get(broker) {
                None => "-".into(),
                Some(d) => KEYS
                    .iter()
                    .map(|k| num_at(d, k).map_or_else(|| "-".into(), |v| fmt_value(v, Unit::Count)))
                    .collect::<Vec<_>>()
                    .join("/"),
            });
        }
        line.extend((0..ratio_cells).map(|_| "-".to_string()));
        Some(line)
    }

    /// `{"reference", "brokers", "variants", "rows": [{label, scenario, brokers: {name:
    /// figures}, ratios: {key: ratio|null}, best_peers: {key: name}, scaling: {variant:
    /// {key: ratio|null}}}]}`. `brokers` lists the reference and its peers; a row's
    /// `brokers` also holds the variants' figures.
    fn summary(&self) -> Value {
        let mut rows = Vec::new();
        let all_metrics = [
            DELIVERED,
            P50,
            P99,
            CPU_PER_MSG,
            RSS_PER_CONN,
            CONNECT_RATE,
            CONNECTED,
            BROKER_RSS,
            BROKER_CORES,
            LOADTEST_CORES,
        ];
        for row in &self.rows {
            let mut brokers = Map::new();
            for broker in self.brokers.iter().chain(&self.variants) {
                let Some(doc) = row.runs.get(broker) else {
                    continue;
                };
                let mut figures = Map::new();
                for m in &all_metrics {
                    figures.insert(m.key.into(), json_num_at(doc, m.pointer));
                }
                for key in ["lost", "duplicated", "reordered"] {
                    figures.insert(key.into(), json_num_at(doc, &format!("/{key}")));
                }
                figures.insert(
                    "loadtest_threads".into(),
                    json_num_at(doc, "/loadtest/threads"),
                );
                figures.insert("ok".into(), json!(doc.get("ok").and_then(Value::as_bool)));
                figures.insert(
                    "failures".into(),
                    doc.get("failures")
                        .cloned()
                        .unwrap_or(Value::Array(Vec::new())),
                );
                brokers.insert(broker.clone(), Value::Object(figures));
            }
            let mut ratios = Map::new();
            let mut best_peers = Map::new();
            for (metric, better) in metrics_for(&row.scenario) {
                let Some(better) = better else { continue };
                let r = self.ratio(row, metric, *better);
                ratios.insert(metric.key.into(), json!(r.as_ref().map(|r| r.value)));
                best_peers.insert(metric.key.into(), json!(r.map(|r| r.peer)));
            }
            let mut scaling = Map::new();
            for variant in self.variants.iter().filter(|v| row.runs.contains_key(*v)) {
                let mut ratios = Map::new();
                for (metric, better) in scaling_metrics_for(&row.scenario) {
                    if better.is_some() {
                        ratios.insert(
                            metric.key.into(),
                            json!(self.scaling_ratio(row, metric, variant)),
                        );
                    }
                }
                scaling.insert(variant.clone(), Value::Object(ratios));
            }
            rows.push(json!({
                "label": row.label,
                "scenario": row.scenario,
                "brokers": brokers,
                "ratios": ratios,
                "best_peers": best_peers,
                "scaling": scaling,
            }));
        }
        json!({
            "reference": self.reference,
            "brokers": self.brokers,
            "variants": self.variants,
            "rows": rows,
        })
    }

    /// Two grouped bar charts, delivered msgs/s and p99 latency, one group per label
    /// that has the figure and one bar per broker.
    fn svg(&self) -> String {
        // A fixed-rate scenario's delivered rate is its input, not a result: the
        // throughput chart shows only the scenarios where it is the key figure.
        let groups = |metric: &Metric, key_only: bool| -> Vec<Group> {
            self.rows
                .iter()
                .filter(|row| !key_only || metrics_for(&row.scenario)[0].0.key == metric.key)
                .filter(|row| {
                    row.runs
                        .values()
                        .any(|d| num_at(d, metric.pointer).is_some_and(|v| v > 0.0))
                })
                .map(|row| Group {
                    label: row.label.clone(),
                    bars: self
                        .brokers
                        .iter()
                        .map(|b| {
                            row.runs.get(b).and_then(|d| {
                                let failed = d.get("ok").and_then(Value::as_bool) == Some(false);
                                num_at(d, metric.pointer).map(|v| (v, failed))
                            })
                        })
                        .collect(),
                })
                .collect()
        };
        let charts = [
            Chart {
                title: "Throughput (higher is better)",
                axis: "delivered msgs/s",
                log: false,
                groups: groups(&DELIVERED, true),
            },
            Chart {
                title: "p99 latency (lower is better, log scale)",
                axis: "p99 latency, µs",
                log: true,
                groups: groups(&P99, false),
            },
        ];
        let group_w = (self.brokers.len() as f64 * (BAR_W + BAR_GAP) + GROUP_GAP).max(MIN_GROUP_W);
        let most_groups = charts
            .iter()
            .map(|c| c.groups.len())
            .max()
            .unwrap_or(0)
            .max(1);
        let width = (MARGIN_L + most_groups as f64 * group_w + MARGIN_R).max(MIN_WIDTH);
        let height = charts.len() as f64 * CHART_H;
        let mut out = String::new();
        let _ = writeln!(
            out,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif" font-size="11">"#
        );
        let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
        for (i, chart) in charts.iter().enumerate() {
            chart.draw(&mut out, i as f64 * CHART_H, width, group_w, &self.brokers);
        }
        out.push_str("</svg>\n");
        out
    }
}

const BAR_W: f64 = 40.0;
const BAR_GAP: f64 = 4.0;
const GROUP_GAP: f64 = 28.0;
const MIN_GROUP_W: f64 = 120.0;
const MARGIN_L: f64 = 80.0;
const MARGIN_R: f64 = 20.0;
const MIN_WIDTH: f64 = 560.0;
/// Each chart: title and legend, plot, scenario labels.
const CHART_H: f64 = 400.0;
const PLOT_TOP: f64 = 64.0;
const PLOT_H: f64 = 270.0;
const PALETTE: [&str; 8] = [
    "#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
];

struct Group {
    label: String,
    /// Per broker, in column order: the figure and whether that run failed.
    bars: Vec<Option<(f64, bool)>>,
}

struct Chart {
    title: &'static str,
    axis: &'static str,
    log: bool,
    groups: Vec<Group>,
}

impl Chart {
    fn draw(&self, out: &mut String, top: f64, width: f64, group_w: f64, brokers: &[String]) {
        let _ = writeln!(
            out,
            r#"<text x="{MARGIN_L}" y="{:.1}" font-size="15" font-weight="bold">{}</text>"#,
            top + 22.0,
            xml_escape(self.title)
        );
        // Legend, one swatch per broker, right-aligned on the title's baseline.
        let mut x = width - MARGIN_R;
        for (i, broker) in brokers.iter().enumerate().rev() {
            x -= 18.0 + 7.0 * broker.chars().count() as f64 + 14.0;
            let _ = writeln!(
                out,
                r#"<rect x="{x:.1}" y="{:.1}" width="12" height="12" fill="{}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
                top + 36.0,
                PALETTE[i % PALETTE.len()],
                x + 16.0,
                top + 46.0,
                xml_escape(broker)
            );
        }
        let plot_top = top + PLOT_TOP;
        let base = plot_top + PLOT_H;
        let plot_right = width - MARGIN_R;
        let _ = writeln!(
            out,
            r#"<text transform="translate(18 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
            plot_top + PLOT_H / 2.0,
            xml_escape(self.axis)
        );
        let values: Vec<f64> = self
            .groups
            .iter()
            .flat_map(|g| g.bars.iter().flatten().map(|(v, _)| *v))
            .filter(|v| *v > 0.0)
            .collect();
        if values.is_empty() {
            let _ = writeln!(
                out,
                r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#666">no data</text>"##,
                (MARGIN_L + plot_right) / 2.0,
                plot_top + PLOT_H / 2.0
            );
            return;
        }
        let scale = Scale::new(&values, self.log);
        for (tick, text) in scale.ticks() {
            let y = base - scale.fraction(tick) * PLOT_H;
            let _ = writeln!(
                out,
                r##"<line x1="{MARGIN_L}" y1="{y:.1}" x2="{plot_right:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{text}</text>"##,
                MARGIN_L - 6.0,
                y + 4.0
            );
        }
        for (gi, group) in self.groups.iter().enumerate() {
            let gx = MARGIN_L + gi as f64 * group_w;
            let bars_w = brokers.len() as f64 * (BAR_W + BAR_GAP) - BAR_GAP;
            let x0 = gx + (group_w - bars_w) / 2.0;
            for (bi, bar) in group.bars.iter().enumerate() {
                let x = x0 + bi as f64 * (BAR_W + BAR_GAP);
                let cx = x + BAR_W / 2.0;
                match bar {
                    Some((v, failed)) if *v > 0.0 => {
                        let h = scale.fraction(*v) * PLOT_H;
                        let mark = if *failed { " !" } else { "" };
                        let _ = writeln!(
                            out,
                            r#"<rect x="{x:.1}" y="{:.1}" width="{BAR_W}" height="{h:.1}" fill="{}"><title>{}: {}</title></rect><text x="{cx:.1}" y="{:.1}" text-anchor="middle" font-size="10">{}{mark}</text>"#,
                            base - h,
                            PALETTE[bi % PALETTE.len()],
                            xml_escape(&brokers[bi]),
                            fmt_value(*v, Unit::Count),
                            base - h - 3.0,
                            fmt_value(*v, Unit::Count),
                        );
                    }
                    _ => {
                        let _ = writeln!(
                            out,
                            r##"<text x="{cx:.1}" y="{:.1}" text-anchor="middle" font-size="10" fill="#666">-</text>"##,
                            base - 3.0
                        );
                    }
                }
            }
            let _ = writeln!(
                out,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                gx + group_w / 2.0,
                base + 18.0,
                xml_escape(&group.label)
            );
        }
        let _ = writeln!(
            out,
            r#"<line x1="{MARGIN_L}" y1="{base:.1}" x2="{plot_right:.1}" y2="{base:.1}" stroke="black"/><line x1="{MARGIN_L}" y1="{plot_top:.1}" x2="{MARGIN_L}" y2="{base:.1}" stroke="black"/>"#
        );
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">scenario</text>"#,
            (MARGIN_L + plot_right) / 2.0,
            base + 40.0
        );
    }
}

/// Maps a figure to the share of the plot height its bar fills: linear from zero, or
/// logarithmic over whole decades.
struct Scale {
    log: bool,
    lo: f64,
    hi: f64,
    step: f64,
}

impl Scale {
    fn new(values: &[f64], log: bool) -> Scale {
        let max = values.iter().cloned().fold(f64::MIN, f64::max);
        if log {
            let min = values.iter().cloned().fold(f64::MAX, f64::min);
            let lo = min.log10().floor();
            let hi = max.log10().ceil().max(lo + 1.0);
            Scale {
                log,
                lo,
                hi,
                step: 1.0,
            }
        } else {
            let step = nice_step(max / 5.0);
            let hi = (max / step).ceil().max(1.0) * step;
            Scale {
                log,
                lo: 0.0,
                hi,
                step,
            }
        }
    }

    fn fraction(&self, v: f64) -> f64 {
        let v = if self.log { v.log10() } else { v };
        ((v - self.lo) / (self.hi - self.lo)).clamp(0.0, 1.0)
    }

    /// Tick positions (in figure units) and their labels.
    fn ticks(&self) -> Vec<(f64, String)> {
        let n = ((self.hi - self.lo) / self.step).round() as usize;
        (0..=n)
            .map(|i| {
                let t = self.lo + i as f64 * self.step;
                let v = if self.log { 10f64.powf(t) } else { t };
                let text = if (1000.0..1e4).contains(&v) {
                    format!("{}k", sig3(v / 1000.0))
                } else {
                    fmt_value(v, Unit::Count)
                };
                (v, text)
            })
            .collect()
    }
}

/// The smallest 1, 2 or 5 times a power of ten that is at least `x`.
fn nice_step(x: f64) -> f64 {
    if x <= 0.0 || !x.is_finite() {
        return 1.0;
    }
    let mag = 10f64.powf(x.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * mag)
        .find(|s| *s >= x)
        .unwrap_or(10.0 * mag)
}

/// Three significant digits, with k/M/G for counts and KiB/MiB/GiB for bytes.
fn fmt_value(v: f64, unit: Unit) -> String {
    let a = v.abs();
    match unit {
        Unit::Count if a >= 1e9 => format!("{}G", sig3(v / 1e9)),
        Unit::Count if a >= 1e6 => format!("{}M", sig3(v / 1e6)),
        Unit::Count if a >= 1e4 => format!("{}k", sig3(v / 1e3)),
        Unit::Count if v.fract() == 0.0 => format!("{v:.0}"),
        Unit::Count | Unit::Plain => sig3(v),
        Unit::Exact => format!("{v:.0}"),
        Unit::Bytes if a >= 1024.0 * 1024.0 * 1024.0 => {
            format!("{} GiB", sig3(v / (1024.0 * 1024.0 * 1024.0)))
        }
        Unit::Bytes if a >= 1024.0 * 1024.0 => format!("{} MiB", sig3(v / (1024.0 * 1024.0))),
        Unit::Bytes if a >= 1024.0 => format!("{} KiB", sig3(v / 1024.0)),
        Unit::Bytes => format!("{v:.0} B"),
    }
}

fn sig3(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// Columns padded to their widest cell: the first two left-aligned, figures right.
fn render_plain(header: &[String], lines: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for line in lines {
        for (w, cell) in widths.iter_mut().zip(line) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut push = |cells: &[String]| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            let pad = " ".repeat(w - cell.chars().count());
            if i > 0 {
                text.push_str("  ");
            }
            if i < 2 {
                text.push_str(cell);
                text.push_str(&pad);
            } else {
                text.push_str(&pad);
                text.push_str(cell);
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    push(header);
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    push(&rule);
    for line in lines {
        push(line);
    }
    out
}

fn render_markdown(header: &[String], lines: &[Vec<String>]) -> String {
    let cell = |c: &String| c.replace('|', "\\|");
    let mut out = String::new();
    let row = |cells: &[String]| {
        format!(
            "| {} |\n",
            cells.iter().map(cell).collect::<Vec<_>>().join(" | ")
        )
    };
    out.push_str(&row(header));
    let align: Vec<&str> = (0..header.len())
        .map(|i| if i < 2 { "---" } else { "---:" })
        .collect();
    let _ = writeln!(out, "|{}|", align.join("|"));
    for line in lines {
        out.push_str(&row(line));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p2p(broker: &str, delivered: f64, p99: u64, cpu_per_msg: f64) -> (PathBuf, Value) {
        (
            PathBuf::from(format!("{broker}-p2p-16-q0.json")),
            json!({
                "version": 1, "scenario": "p2p", "label": "p2p-16-q0", "broker_name": broker,
                "delivered_per_s": delivered,
                "latency_us": {"count": 10, "mean": 1.0, "p50": 50, "p90": 80, "p99": p99, "p999": 900, "max": 1500},
                "lost": 0, "duplicated": 0, "reordered": 0,
                "loadtest": {"threads": 2, "cpu_s": 3.2, "cpu_cores": 1.6},
                "broker_process": {"pid": 1, "cpu_s": 4.5, "cpu_us_per_msg": cpu_per_msg, "rss_bytes": 12345678, "rss_start_bytes": 1000000},
                "conns": null, "ok": true, "failures": []
            }),
        )
    }

    fn conns(broker: &str, per_conn: Option<f64>, rate: f64) -> (PathBuf, Value) {
        (
            PathBuf::from(format!("{broker}-conns-50k.json")),
            json!({
                "version": 1, "scenario": "conns", "label": "conns-50k", "broker_name": broker,
                "delivered_per_s": 0.0, "latency_us": null,
                "conns": {"target": 19000, "connected": 19000, "failed": 0, "connect_s": 1.0,
                          "connect_per_s": rate, "rss_per_conn_bytes": per_conn},
                "ok": true
            }),
        )
    }

    fn sample() -> Report {
        Report::build(
            vec![
                p2p("mosquitto", 100_000.0, 400, 2.0),
                p2p("shardmq", 300_000.0, 200, 0.5),
                p2p("rumqttd", 150_000.0, 100, 1.0),
                conns("shardmq", Some(2000.0), 20_000.0),
                conns("mosquitto", Some(1000.0), 10_000.0),
                conns("rumqttd", None, 40_000.0),
            ],
            "shardmq",
            &[],
        )
    }

    #[test]
    fn rows_keep_first_seen_order_and_the_reference_leads_the_columns() {
        let r = sample();
        assert_eq!(r.brokers, ["shardmq", "mosquitto", "rumqttd"]);
        let labels: Vec<&str> = r.rows.iter().map(|r| r.label.as_str()).collect();
        assert_eq!(labels, ["p2p-16-q0", "conns-50k"]);
    }

    #[test]
    fn a_v5_run_gets_its_own_row() {
        let (path, mut v5) = p2p("mosquitto", 90_000.0, 400, 2.0);
        v5["protocol"] = json!("5.0");
        v5["protocol_level"] = json!(5);
        let (path2, mut named) = p2p("shardmq", 90_000.0, 400, 2.0);
        named["protocol_level"] = json!(5);
        named["label"] = json!("p2p-16-q0-v5");
        let r = Report::build(
            vec![
                p2p("mosquitto", 100_000.0, 400, 2.0),
                (path, v5),
                (path2, named),
            ],
            "shardmq",
            &[],
        );
        let labels: Vec<&str> = r.rows.iter().map(|r| r.label.as_str()).collect();
        assert_eq!(labels, ["p2p-16-q0", "p2p-16-q0-v5"]);
        assert_eq!(r.rows[1].runs.len(), 2);
    }

    #[test]
    fn throughput_is_compared_with_the_fastest_peer_and_costs_with_the_cheapest() {
        let r = sample();
        let row = &r.rows[0];
        let tp = r.ratio(row, &DELIVERED, Better::Higher).unwrap();
        assert_eq!(
            tp,
            Ratio {
                value: 2.0,
                peer: "rumqttd".into()
            }
        );
        let cpu = r.ratio(row, &CPU_PER_MSG, Better::Lower).unwrap();
        assert_eq!(
            cpu,
            Ratio {
                value: 0.5,
                peer: "rumqttd".into()
            }
        );
        let p99 = r.ratio(row, &P99, Better::Lower).unwrap();
        assert_eq!(
            p99,
            Ratio {
                value: 2.0,
                peer: "rumqttd".into()
            }
        );
    }

    #[test]
    fn a_peer_without_the_figure_is_left_out_of_the_comparison() {
        let r = sample();
        let row = &r.rows[1];
        let mem = r.ratio(row, &RSS_PER_CONN, Better::Lower).unwrap();
        assert_eq!(
            mem,
            Ratio {
                value: 2.0,
                peer: "mosquitto".into()
            }
        );
        let rate = r.ratio(row, &CONNECT_RATE, Better::Higher).unwrap();
        assert_eq!(
            rate,
            Ratio {
                value: 0.5,
                peer: "rumqttd".into()
            }
        );
    }

    #[test]
    fn no_peer_means_no_ratio() {
        let r = Report::build(vec![p2p("shardmq", 1.0, 1, 1.0)], "shardmq", &[]);
        assert_eq!(r.ratio(&r.rows[0], &DELIVERED, Better::Higher), None);
        assert!(r.table(false).contains("p2p-16-q0"));
    }

    #[test]
    fn summary_carries_figures_and_ratios_per_label() {
        let s = sample().summary();
        assert_eq!(s["reference"], "shardmq");
        assert_eq!(s["rows"][0]["label"], "p2p-16-q0");
        assert_eq!(s["rows"][0]["ratios"]["delivered_per_s"], 2.0);
        assert_eq!(s["rows"][0]["best_peers"]["delivered_per_s"], "rumqttd");
        assert_eq!(s["rows"][0]["brokers"]["mosquitto"]["p99_us"], 400);
        assert_eq!(s["rows"][1]["ratios"]["rss_per_conn_bytes"], 2.0);
        assert_eq!(
            s["rows"][1]["brokers"]["rumqttd"]["rss_per_conn_bytes"],
            Value::Null
        );
    }

    #[test]
    fn table_shows_missing_figures_as_dashes_and_flags_failures_and_loss() {
        let mut runs = vec![p2p("shardmq", 300_000.0, 200, 0.5)];
        let (path, mut bad) = p2p("mosquitto", 1000.0, 400, 2.0);
        bad["ok"] = json!(false);
        bad["lost"] = json!(7);
        bad["failures"] = json!(["lost 7 messages"]);
        bad["loadtest"]["cpu_cores"] = json!(1.9);
        bad.as_object_mut().unwrap().remove("broker_process");
        runs.push((path, bad));
        let text = Report::build(runs, "shardmq", &[]).table(false);
        assert!(text.contains("1000 !"), "{text}");
        assert!(text.contains("lost/dup/reordered"), "{text}");
        assert!(text.contains("7/0/0"), "{text}");
        assert!(
            text.contains("p2p-16-q0 on mosquitto: lost 7 messages"),
            "{text}"
        );
        let cpu_line = text.lines().find(|l| l.contains("broker CPU")).unwrap();
        assert!(cpu_line.contains(" - "), "{cpu_line}");
        // 1.9 cores of 2 threads is past 90%, 1.6 is not.
        assert!(text.contains("1.60 of 2  1.90 of 2 *"), "{text}");
        assert!(text.contains("may be its limit"), "{text}");
    }

    #[test]
    fn markdown_table_has_a_header_rule_and_one_row_per_figure() {
        let text = sample().table(true);
        let mut lines = text.lines();
        assert!(lines
            .next()
            .unwrap()
            .starts_with("| scenario | figure | shardmq | mosquitto | rumqttd |"));
        assert!(lines.next().unwrap().starts_with("|---|---|---:|"));
        assert!(
            text.contains(
                "| p2p-16-q0 | delivered msgs/s ↑ | 300k | 100k | 150k | 2.00x (rumqttd) |"
            ),
            "{text}"
        );
    }

    /// The first tag that does not close in order, if any: enough XML to catch a
    /// forgotten `</text>` or a stray `<` from an unescaped label.
    fn unbalanced_tag(doc: &str) -> Option<String> {
        let mut open: Vec<String> = Vec::new();
        let mut rest = doc;
        while let Some(start) = rest.find('<') {
            let end = start + rest[start..].find('>')?;
            let tag = &rest[start + 1..end];
            rest = &rest[end + 1..];
            let name: String = tag
                .trim_start_matches('/')
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect();
            if name.is_empty() {
                return Some(tag.to_string());
            }
            if tag.starts_with('/') {
                if open.pop().as_deref() != Some(name.as_str()) {
                    return Some(tag.to_string());
                }
            } else if !tag.ends_with('/') {
                open.push(name);
            }
        }
        open.pop()
    }

    #[test]
    fn svg_is_one_document_naming_every_label_and_broker() {
        let mut runs = vec![
            p2p("shardmq", 300_000.0, 200, 0.5),
            p2p("mosquitto", 100_000.0, 4000, 2.0),
        ];
        let (path, mut other) = p2p("shardmq", 50_000.0, 90, 0.4);
        other["label"] = json!("fanout-<100>&q0");
        runs.push((path, other));
        let svg = Report::build(runs, "shardmq", &[]).svg();
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<svg").count(), 1);
        assert!(svg.contains("p2p-16-q0"));
        assert!(svg.contains("fanout-&lt;100&gt;&amp;q0"));
        assert!(!svg.contains("<100>"));
        assert!(svg.contains(">mosquitto</text>"));
        assert!(svg.contains(">300k</text>"));
        assert_eq!(svg.matches("<text").count(), svg.matches("</text>").count());
        assert_eq!(unbalanced_tag(&svg), None);
    }

    #[test]
    fn log_scale_spans_whole_decades_and_linear_scale_starts_at_zero() {
        let log = Scale::new(&[90.0, 4000.0], true);
        assert_eq!((log.lo, log.hi), (1.0, 4.0));
        assert_eq!(log.ticks().len(), 4);
        assert_eq!(log.fraction(100.0), 1.0 / 3.0);
        let lin = Scale::new(&[300_000.0, 100_000.0], false);
        assert_eq!((lin.lo, lin.step, lin.hi), (0.0, 100_000.0, 300_000.0));
        assert_eq!(lin.fraction(150_000.0), 0.5);
    }

    #[test]
    fn figures_print_with_three_significant_digits() {
        assert_eq!(fmt_value(1_234_567.0, Unit::Count), "1.23M");
        assert_eq!(fmt_value(45_600.0, Unit::Count), "45.6k");
        assert_eq!(fmt_value(200.0, Unit::Plain), "200");
        assert_eq!(fmt_value(0.5, Unit::Plain), "0.500");
        assert_eq!(fmt_value(1800.0, Unit::Bytes), "1.76 KiB");
        assert_eq!(fmt_value(12_345_678.0, Unit::Bytes), "11.8 MiB");
    }

    /// The sample's p2p and conns runs, a one-shard `shardmq-1` on both, and a
    /// latency run on shardmq and shardmq-1 only.
    fn with_variant() -> Report {
        let mut runs = vec![
            p2p("mosquitto", 100_000.0, 400, 2.0),
            p2p("shardmq", 300_000.0, 200, 0.5),
            p2p("rumqttd", 150_000.0, 100, 1.0),
            // Faster and cheaper than every peer: were it a peer, it would be the best.
            p2p("shardmq-1", 200_000.0, 50, 0.4),
            conns("shardmq", Some(2000.0), 20_000.0),
            conns("shardmq-1", Some(1000.0), 25_000.0),
            conns("mosquitto", Some(1000.0), 10_000.0),
        ];
        for (broker, p99, cpu) in [("shardmq", 600, 20.0), ("shardmq-1", 400, 16.0)] {
            let (path, mut doc) = p2p(broker, 50_000.0, p99, cpu);
            doc["scenario"] = json!("latency");
            doc["label"] = json!("latency-50k");
            doc["broker_process"]["cpu_cores"] = json!(if broker == "shardmq" { 1.1 } else { 0.9 });
            runs.push((path, doc));
        }
        Report::build(runs, "shardmq", &[])
    }

    #[test]
    fn a_variant_of_the_reference_is_never_its_best_peer() {
        let r = with_variant();
        assert_eq!(r.brokers, ["shardmq", "mosquitto", "rumqttd"]);
        assert_eq!(r.variants, ["shardmq-1"]);
        let row = &r.rows[0];
        let tp = r.ratio(row, &DELIVERED, Better::Higher).unwrap();
        assert_eq!((tp.value, tp.peer.as_str()), (2.0, "rumqttd"));
        let cpu = r.ratio(row, &CPU_PER_MSG, Better::Lower).unwrap();
        assert_eq!((cpu.value, cpu.peer.as_str()), (0.5, "rumqttd"));
        // Latency has no peer at all, only the variant: no best-peer ratio.
        let latency = &r.rows[2];
        assert_eq!(r.ratio(latency, &P99, Better::Lower), None);
        let text = r.table(false);
        let header = text.lines().next().unwrap();
        assert!(!header.contains("shardmq-1"), "{header}");
        assert!(!text.contains("(shardmq-1)"), "{text}");
    }

    #[test]
    fn a_variant_can_be_named_and_then_is_not_a_peer() {
        let runs = vec![
            p2p("shardmq", 300_000.0, 200, 0.5),
            p2p("one-shard", 200_000.0, 100, 0.4),
            p2p("rumqttd", 150_000.0, 100, 1.0),
        ];
        let named = Report::build(runs.clone(), "shardmq", &["one-shard".to_string()]);
        assert_eq!(named.brokers, ["shardmq", "rumqttd"]);
        assert_eq!(named.variants, ["one-shard"]);
        let tp = named
            .ratio(&named.rows[0], &DELIVERED, Better::Higher)
            .unwrap();
        assert_eq!(tp.peer, "rumqttd");
        // Unnamed, and without the reference's prefix, it is a peer like any other.
        let unnamed = Report::build(runs, "shardmq", &[]);
        assert_eq!(unnamed.brokers, ["shardmq", "one-shard", "rumqttd"]);
        assert!(unnamed.variants.is_empty());
        assert!(!unnamed.table(false).contains("Scaling"));
    }

    #[test]
    fn scaling_divides_the_reference_by_the_variant_on_the_same_scenario() {
        let r = with_variant();
        let (p2p, conns, latency) = (&r.rows[0], &r.rows[1], &r.rows[2]);
        assert_eq!(r.scaling_ratio(p2p, &DELIVERED, "shardmq-1"), Some(1.5));
        assert_eq!(r.scaling_ratio(p2p, &CPU_PER_MSG, "shardmq-1"), Some(1.25));
        assert_eq!(r.scaling_ratio(latency, &P99, "shardmq-1"), Some(1.5));
        assert_eq!(
            r.scaling_ratio(conns, &CONNECT_RATE, "shardmq-1"),
            Some(0.8)
        );
        assert_eq!(r.scaling_ratio(p2p, &DELIVERED, "rumqttd-1"), None);
    }

    #[test]
    fn table_ends_with_a_scaling_table_of_the_reference_and_its_variants() {
        let text = with_variant().table(true);
        let scaling = &text[text
            .find("Scaling: shardmq against shardmq-1")
            .expect(&text)..];
        assert!(
            scaling.contains("| scenario | figure | shardmq | shardmq-1 | shardmq / shardmq-1 |"),
            "{scaling}"
        );
        for line in [
            "| p2p-16-q0 | delivered msgs/s ↑ | 300k | 200k | 1.50x |",
            "|  | broker CPU µs/msg ↓ | 0.500 | 0.400 | 1.25x |",
            "|  | p99 µs | 200 | 50 | - |",
            "| conns-50k | connects/s ↑ | 20k | 25k | 0.80x |",
            "|  | broker RSS/conn ↓ | 1.95 KiB | 1000 B | 2.00x |",
            "| latency-50k | p99 µs ↓ | 600 | 400 | 1.50x |",
            "|  | broker cores | 1.10 | 0.900 | - |",
        ] {
            assert!(scaling.contains(line), "{line}\n{scaling}");
        }
        assert!(scaling.contains("scaling ratio: shardmq divided by the variant"));
        // The main table above it has the peers only.
        let main = &text[..text.find("Scaling:").unwrap()];
        assert!(
            main.contains("shardmq-1 are shardmq run another way"),
            "{main}"
        );
        assert!(!main.contains("| 200k |"), "{main}");
    }

    #[test]
    fn a_failed_variant_run_is_flagged_in_the_scaling_table_and_listed() {
        let (path, mut bad) = p2p("shardmq-1", 1000.0, 400, 2.0);
        bad["ok"] = json!(false);
        bad["lost"] = json!(3);
        bad["failures"] = json!(["lost 3 messages"]);
        let runs = vec![p2p("shardmq", 300_000.0, 200, 0.5), (path, bad)];
        let text = Report::build(runs, "shardmq", &[]).table(false);
        let scaling = &text[text.find("Scaling:").expect(&text)..];
        assert!(scaling.contains("1000 !"), "{scaling}");
        let integrity = scaling.lines().find(|l| l.contains("lost/dup/reordered"));
        let integrity = integrity.expect(scaling);
        assert!(
            integrity.contains("0/0/0") && integrity.contains("3/0/0"),
            "{scaling}"
        );
        assert!(
            text.contains("p2p-16-q0 on shardmq-1: lost 3 messages"),
            "{text}"
        );
    }

    #[test]
    fn summary_lists_variants_apart_and_carries_scaling_ratios() {
        let s = with_variant().summary();
        assert_eq!(s["brokers"], json!(["shardmq", "mosquitto", "rumqttd"]));
        assert_eq!(s["variants"], json!(["shardmq-1"]));
        let p2p = &s["rows"][0];
        assert_eq!(p2p["best_peers"]["delivered_per_s"], "rumqttd");
        assert_eq!(p2p["brokers"]["shardmq-1"]["delivered_per_s"], 200_000.0);
        assert_eq!(p2p["scaling"]["shardmq-1"]["delivered_per_s"], 1.5);
        assert_eq!(p2p["scaling"]["shardmq-1"]["cpu_us_per_msg"], 1.25);
        assert_eq!(s["rows"][2]["scaling"]["shardmq-1"]["p99_us"], 1.5);
        assert_eq!(s["rows"][2]["brokers"]["shardmq"]["broker_cpu_cores"], 1.1);
        // No variant ran it: no scaling entry.
        let plain = sample().summary();
        assert_eq!(plain["variants"], json!([]));
        assert_eq!(plain["rows"][0]["scaling"], json!({}));
    }

    #[test]
    fn a_summary_file_in_the_results_folder_is_recognised() {
        assert!(is_summary(&sample().summary()));
        assert!(!is_summary(&p2p("shardmq", 1.0, 1, 1.0).1));
    }
}
