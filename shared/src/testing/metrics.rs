//! Reading a `/metrics` scrape in tests with a Prometheus text-format parser
//! (`nom-openmetrics`), so a test sees what Prometheus would. (`prometheus-parse` was
//! tried first: it silently drops every line whose label value holds a brace, as
//! `route="/api/v1/customers/{id}"`.)

use std::collections::HashMap;

/// One sample: its name, labels and value.
type Sample = (String, HashMap<String, String>, f64);

/// One scrape, parsed.
pub struct Metrics(Vec<Sample>);

impl Metrics {
    /// Parses Prometheus's text format; panics on text it cannot read, all of it.
    pub fn parse(text: &str) -> Self {
        // The format ignores empty lines (the exporter puts one between families); this
        // parser refuses them.
        let text: String = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| format!("{l}\n"))
            .collect();
        let (rest, families) = nom_openmetrics::parser::prometheus(&text)
            .unwrap_or_else(|e| panic!("the scrape is not Prometheus's text format: {e:?}"));
        assert!(rest.trim().is_empty(), "unparsed text: {rest}");
        let samples = families
            .iter()
            .flat_map(|f| f.samples.iter())
            .map(|s| {
                let labels = s
                    .labels()
                    .iter()
                    .map(|l| (l.name.to_string(), l.value.to_string()))
                    .collect();
                (s.name().to_string(), labels, s.number())
            })
            .collect();
        Self(samples)
    }

    /// Fetches and parses `url`.
    pub async fn scrape(url: &str) -> Self {
        let response = reqwest::get(url).await.expect("scraping metrics");
        assert_eq!(response.status(), 200, "GET {url}");
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        assert!(content_type.starts_with("text/plain"), "{content_type}");
        Self::parse(&response.text().await.expect("the scrape's body"))
    }

    /// The value of the series `name` whose labels include `labels` (0 when there is none);
    /// for a histogram, its count of observations. Panics when several series match.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let find = |name: &str| -> Vec<f64> {
            self.0
                .iter()
                .filter(|(n, l, _)| {
                    n == name
                        && labels
                            .iter()
                            .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
                })
                .map(|(_, _, value)| *value)
                .collect()
        };
        let mut found = find(name);
        if found.is_empty() {
            found = find(&format!("{name}_count"));
        }
        assert!(
            found.len() <= 1,
            "{name} {labels:?} matches {} series",
            found.len()
        );
        found.first().copied().unwrap_or(0.0)
    }

    /// The labels of every series of `name`.
    pub fn series(&self, name: &str) -> Vec<HashMap<String, String>> {
        self.0
            .iter()
            .filter(|(n, _, _)| n == name)
            .map(|(_, l, _)| l.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_with_braces_and_histograms_are_read() {
        let text = "# HELP x_total X.\n# TYPE x_total counter\n\n\
                    x_total{route=\"/a/{id}\",status=\"200\"} 3\nx_total{route=\"/b\",status=\"200\"} 4\n\
                    # TYPE h_seconds histogram\nh_seconds_bucket{le=\"0.1\"} 1\nh_seconds_bucket{le=\"+Inf\"} 2\n\
                    h_seconds_sum 0.3\nh_seconds_count 2\n";
        let m = Metrics::parse(text);
        assert_eq!(m.value("x_total", &[("route", "/a/{id}")]), 3.0);
        assert_eq!(m.value("x_total", &[("route", "/b")]), 4.0);
        assert_eq!(m.value("x_total", &[("route", "/c")]), 0.0);
        assert_eq!(m.value("h_seconds", &[]), 2.0);
    }
}
