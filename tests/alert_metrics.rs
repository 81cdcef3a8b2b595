//! The alert rules (`alerts/alerts_prometheus.yml`) and the Grafana dashboard
//! (`alerts/grafana-dashboard.json`) name only metrics that the code registers
//! (`mmt_core::telemetry::Metrics`): rename or remove a metric and this fails,
//! instead of an alert that silently never fires. It also checks that each
//! alert carries what the runbooks and routing need and has a firing and a
//! non-firing promtool unit test in `alerts/tests/` (`make alerts-test` runs them).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use mmt_core::telemetry::Metrics;
use prometheus::proto::MetricType;
use yaml_rust2::{Yaml, YamlLoader};

/// Metrics that alerts use but that other branches register: tolerated here
/// as unregistered until they are merged. Empty it at merge: the test fails
/// once a name here is registered, so the list cannot go stale.
const PENDING: &[&str] = &[];

/// Series Prometheus itself writes, which the dashboard may query.
const BUILTIN: &[&str] = &["ALERTS"];

/// The alerts the operators' guide lists; docs/operations.md has an entry for
/// each, anchored at the lowercased name.
const GUIDE_ALERTS: &[&str] = &[
    "DLQIngressRateHigh",
    "ReprocessorPermanentFailures",
    "TranscriptionLatencyP95High",
    "EndToEndLatencyP95High",
    "QueueBacklogSustained",
    "VaultKeyRefreshFailures",
    "VaultTokenRenewFailures",
    "ApiErrorRateHigh",
    "CircuitBreakerOpen",
    "PublishFailures",
];

const RUNBOOK: &str = "https://github.com/mmt/mmt/blob/main/docs/operations.md#";

/// PromQL aggregation operators: a name before `by`/`without` or `(`.
const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];

/// Keywords followed by a parenthesised list of label names.
const LABEL_LIST_KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Other words of the language that are not metric names.
const KEYWORDS: &[&str] = &["bool", "and", "or", "unless", "atan2", "inf", "nan"];

fn alerts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("alerts")
}

fn load_yaml(path: &Path) -> Yaml {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let mut docs = YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    assert_eq!(docs.len(), 1, "{path:?}: one YAML document");
    docs.remove(0)
}

fn list(yaml: &Yaml) -> &[Yaml] {
    yaml.as_vec().map_or(&[], Vec::as_slice)
}

fn text<'a>(yaml: &'a Yaml, key: &str) -> Option<&'a str> {
    yaml[key].as_str()
}

/// One alerting rule of the rules file.
#[derive(Debug)]
struct Alert {
    name: String,
    expr: String,
    rule: Yaml,
}

fn alerts() -> Vec<Alert> {
    let doc = load_yaml(&alerts_dir().join("alerts_prometheus.yml"));
    let groups = list(&doc["groups"]);
    assert!(!groups.is_empty(), "the rules file has no groups");
    let mut alerts = Vec::new();
    for group in groups {
        for rule in list(&group["rules"]) {
            let name = text(rule, "alert")
                .expect("every rule is an alert")
                .to_owned();
            let expr = text(rule, "expr")
                .unwrap_or_else(|| panic!("{name} has no expr"))
                .to_owned();
            alerts.push(Alert {
                name,
                expr,
                rule: rule.clone(),
            });
        }
    }
    alerts
}

/// The metric names a PromQL expression selects: identifiers outside label
/// matchers, ranges and strings that are not functions, aggregations,
/// keywords, label lists or durations.
fn metric_names(expr: &str) -> Vec<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if matches!(c, '"' | '\'' | '`') {
            i = skip_string(&chars, i);
        } else if c == '{' {
            i = skip_past(&chars, i, '}');
        } else if c == '[' {
            i = skip_past(&chars, i, ']');
        } else if c == '#' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            // A number or a duration (1e3, 0x1f, 5m, 1h30m).
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let lower = word.to_ascii_lowercase();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            let before_paren = chars.get(next) == Some(&'(');
            if LABEL_LIST_KEYWORDS.contains(&lower.as_str()) {
                if before_paren {
                    i = skip_past(&chars, next, ')');
                }
            } else if lower == "offset" {
                // `offset 5m` or `offset -1h`: skip the duration.
                i = next;
                if chars.get(i) == Some(&'-') {
                    i += 1;
                }
                while i < chars.len() && chars[i].is_ascii_alphanumeric() {
                    i += 1;
                }
            } else if !(before_paren
                || AGGREGATIONS.contains(&lower.as_str())
                || KEYWORDS.contains(&lower.as_str()))
            {
                names.push(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// Index just past the string that opens at `start`.
fn skip_string(chars: &[char], start: usize) -> usize {
    let quote = chars[start];
    let mut i = start + 1;
    while i < chars.len() && chars[i] != quote {
        if chars[i] == '\\' && quote != '`' {
            i += 1;
        }
        i += 1;
    }
    i + 1
}

/// Index just past the `close` that ends the bracket at `start`, skipping strings.
fn skip_past(chars: &[char], start: usize, close: char) -> usize {
    let mut i = start + 1;
    while i < chars.len() && chars[i] != close {
        if matches!(chars[i], '"' | '\'' | '`') {
            i = skip_string(chars, i);
        } else {
            i += 1;
        }
    }
    i + 1
}

/// Every metric family the code registers, by name.
fn registered() -> BTreeMap<String, MetricType> {
    let metrics = Metrics::new().expect("metrics register");
    metrics
        .families()
        .into_iter()
        .map(|family| (family.name().to_owned(), family.get_field_type()))
        .collect()
}

/// Why `name` (as a query writes it) is not a series the code exports, if it is not.
fn unregistered(name: &str, registered: &BTreeMap<String, MetricType>) -> Option<String> {
    let histogram_base = ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix));
    match registered.get(name) {
        Some(MetricType::HISTOGRAM) => {
            return Some(format!(
                "{name} is a histogram: query {name}_bucket, _sum or _count"
            ))
        }
        Some(_) => return None,
        None => {}
    }
    if let Some(base) = histogram_base {
        if registered.get(base) == Some(&MetricType::HISTOGRAM) {
            return None;
        }
    }
    if PENDING.contains(&name) || histogram_base.is_some_and(|base| PENDING.contains(&base)) {
        return None;
    }
    Some(format!(
        "{name} is not registered by mmt_core::telemetry::Metrics"
    ))
}

#[test]
fn every_metric_an_alert_uses_is_registered() {
    let registered = registered();
    let mut problems = Vec::new();
    let mut used = BTreeSet::new();
    for alert in alerts() {
        let names = metric_names(&alert.expr);
        assert!(
            !names.is_empty(),
            "{}: no metric found in its expr",
            alert.name
        );
        for name in names {
            if let Some(problem) = unregistered(&name, &registered) {
                problems.push(format!("alert {}: {problem}", alert.name));
            }
            used.insert(name);
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    for pending in PENDING {
        assert!(
            !registered.contains_key(*pending),
            "{pending} is registered now: remove it from PENDING in {}",
            file!()
        );
        assert!(
            used.iter().any(|name| name.starts_with(pending)),
            "{pending} is in PENDING but no alert uses it"
        );
    }
}

#[test]
fn every_alert_of_the_guide_is_there_with_severity_and_runbook() {
    let alerts = alerts();
    let names: Vec<&str> = alerts.iter().map(|alert| alert.name.as_str()).collect();
    let unique: BTreeSet<&str> = names.iter().copied().collect();
    assert_eq!(
        unique.len(),
        names.len(),
        "an alert name repeats: {names:?}"
    );
    assert_eq!(
        unique,
        GUIDE_ALERTS.iter().copied().collect::<BTreeSet<_>>(),
        "the alerts differ from the guide's"
    );
    for alert in &alerts {
        let severity = text(&alert.rule["labels"], "severity");
        assert!(
            matches!(severity, Some("critical" | "warning")),
            "{}: severity {severity:?}",
            alert.name
        );
        let annotations = &alert.rule["annotations"];
        for key in ["summary", "description"] {
            assert!(
                text(annotations, key).is_some_and(|value| !value.trim().is_empty()),
                "{}: no {key}",
                alert.name
            );
        }
        assert_eq!(
            text(annotations, "runbook_url"),
            Some(format!("{RUNBOOK}{}", alert.name.to_lowercase()).as_str()),
            "{}: runbook_url",
            alert.name
        );
    }
}

#[test]
fn every_alert_has_a_firing_and_a_non_firing_unit_test() {
    let mut firing = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    let mut files = 0;
    for entry in std::fs::read_dir(alerts_dir().join("tests")).expect("alerts/tests") {
        let path = entry.expect("directory entry").path();
        if path.extension().and_then(|ext| ext.to_str()) != Some("yml") {
            continue;
        }
        files += 1;
        let doc = load_yaml(&path);
        let rule_files: Vec<&str> = list(&doc["rule_files"])
            .iter()
            .filter_map(Yaml::as_str)
            .collect();
        assert_eq!(rule_files, ["../alerts_prometheus.yml"], "{path:?}");
        for test in list(&doc["tests"]) {
            for case in list(&test["alert_rule_test"]) {
                let name = text(case, "alertname")
                    .unwrap_or_else(|| panic!("{path:?}: a case without alertname"))
                    .to_owned();
                if list(&case["exp_alerts"]).is_empty() {
                    quiet.insert(name);
                } else {
                    firing.insert(name);
                }
            }
        }
    }
    assert!(files > 0, "no unit tests in alerts/tests");
    for alert in alerts() {
        assert!(
            firing.contains(&alert.name),
            "{}: no firing case",
            alert.name
        );
        assert!(
            quiet.contains(&alert.name),
            "{}: no non-firing case",
            alert.name
        );
    }
    let known: BTreeSet<String> = alerts().into_iter().map(|alert| alert.name).collect();
    let tested: BTreeSet<String> = firing.union(&quiet).cloned().collect();
    assert!(
        tested.is_subset(&known),
        "tests for unknown alerts: {:?}",
        tested.difference(&known).collect::<Vec<_>>()
    );
}

/// Every PromQL query of a dashboard: the panels' and annotations' `expr`,
/// and the metric of a `label_values(metric, label)` variable.
fn dashboard_queries(node: &serde_json::Value, out: &mut Vec<String>) {
    match node {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr", serde_json::Value::String(expr)) => out.push(expr.clone()),
                    ("query" | "definition", serde_json::Value::String(query)) => {
                        if let Some(args) = query.trim().strip_prefix("label_values(") {
                            let metric = args.split(',').next().unwrap_or_default();
                            out.push(metric.to_owned());
                        }
                    }
                    _ => dashboard_queries(value, out),
                }
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                dashboard_queries(item, out);
            }
        }
        _ => {}
    }
}

#[test]
fn the_dashboard_queries_only_registered_metrics_and_every_alerted_one() {
    let path = alerts_dir().join("grafana-dashboard.json");
    let text = std::fs::read_to_string(&path).expect("grafana-dashboard.json");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard parses");
    assert!(
        dashboard["panels"]
            .as_array()
            .is_some_and(|panels| !panels.is_empty()),
        "no panels"
    );
    let mut queries = Vec::new();
    dashboard_queries(&dashboard, &mut queries);
    let registered = registered();
    let mut problems = Vec::new();
    let mut drawn = BTreeSet::new();
    for query in &queries {
        for name in metric_names(query) {
            if BUILTIN.contains(&name.as_str()) {
                continue;
            }
            if let Some(problem) = unregistered(&name, &registered) {
                problems.push(format!("dashboard query {query:?}: {problem}"));
            }
            drawn.insert(name);
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    for alert in alerts() {
        for name in metric_names(&alert.expr) {
            assert!(
                drawn.contains(&name),
                "alert {} uses {name}, which no dashboard panel shows",
                alert.name
            );
        }
    }
}

#[test]
fn metric_names_skips_functions_labels_ranges_and_keywords() {
    let cases: &[(&str, &[&str])] = &[
        (
            r#"histogram_quantile(0.95, sum by (job, le) (rate(a_bucket{le="+Inf", x=~"}|{"}[5m]))) > 5"#,
            &["a_bucket"],
        ),
        (
            "sum(rate(b_total[5m])) without (pod) / on(instance) group_left(version) c offset -1h",
            &["b_total", "c"],
        ),
        (
            "d > 0 unless e > bool 1e3 and f or g * inf",
            &["d", "e", "f", "g"],
        ),
        (
            "count_values(\"v\", h) # i is only a comment\n + max(j:k_rate5m)",
            &["h", "j:k_rate5m"],
        ),
        (
            r#"sum(rate(m{job=~"$job",status=~"5.."}[$__rate_interval])) * 60"#,
            &["m"],
        ),
    ];
    for (expr, expected) in cases {
        assert_eq!(metric_names(expr), *expected, "{expr}");
    }
}

#[test]
fn an_unregistered_or_bare_histogram_name_is_reported() {
    let registered = registered();
    assert_eq!(unregistered("publish_failures_total", &registered), None);
    assert_eq!(
        unregistered("transcription_duration_seconds_bucket", &registered),
        None
    );
    assert!(unregistered("transcription_duration_seconds", &registered).is_some());
    assert!(unregistered("publish_failure_total", &registered).is_some());
    // _bucket only on a histogram.
    assert!(unregistered("publish_failures_total_bucket", &registered).is_some());
}
