//! `deploy/`: the alert rules and the Grafana dashboard name only metrics the binaries
//! record (a renamed metric would leave an alert that never fires), and every metric has
//! a panel or an alert.

use std::collections::BTreeSet;
use std::path::Path;

fn deploy(file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The `customer_sync_...` names in `text`, with a histogram's `_bucket`, `_sum` and
/// `_count` series taken back to the histogram.
fn metrics_named(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("customer_sync_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                name.strip_suffix(suffix)
                    .filter(|b| shared::metrics::ALL.contains(b))
            })
            .unwrap_or(&name);
        names.insert(base.to_owned());
    }
    names
}

#[test]
fn alerts_and_dashboard_name_only_metrics_that_exist_and_cover_them_all() {
    let alerts = deploy("alerts.yml");
    let dashboard = deploy("grafana-dashboard.json");
    let parsed: serde_json::Value =
        serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    let panels = parsed["panels"].as_array().expect("panels");
    assert!(panels
        .iter()
        .all(|p| p["targets"].as_array().is_some_and(|t| !t.is_empty())));

    let known: BTreeSet<String> = shared::metrics::ALL.iter().map(|s| s.to_string()).collect();
    let used: BTreeSet<String> = metrics_named(&alerts)
        .into_iter()
        .chain(metrics_named(&dashboard))
        .collect();
    let unknown: Vec<_> = used.difference(&known).collect();
    assert!(
        unknown.is_empty(),
        "deploy/ names metrics nobody records: {unknown:?}"
    );
    let uncovered: Vec<_> = known
        .difference(&used)
        .filter(|m| m.as_str() != shared::metrics::RETENTION_PASSES)
        .collect();
    assert!(
        uncovered.is_empty(),
        "metrics with neither a panel nor an alert: {uncovered:?}"
    );
    // Every rule has a name, an expression and a summary for whoever is paged.
    let rules = alerts.matches("- alert: ").count();
    assert!(rules >= 10, "{rules} rules");
    assert_eq!(alerts.matches("expr:").count(), rules);
    assert_eq!(alerts.matches("summary:").count(), rules);
}

#[test]
fn metric_names_follow_prometheus_conventions() {
    for name in shared::metrics::ALL {
        assert!(name.starts_with("customer_sync_"), "{name}");
        assert!(
            name.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "{name}"
        );
        let counter = name.ends_with("_total");
        let unit = name.ends_with("_seconds") || name.ends_with("_size");
        assert!(
            counter || unit || !name.contains("seconds"),
            "{name}: a unit belongs at the end"
        );
    }
}
