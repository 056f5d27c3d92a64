//! Reading a node's `/metrics`: the scrape over HTTP/1.1 and its samples, parsed by
//! `prometheus-parse` (a parser of the text format that is not ours).

use std::collections::HashMap;

use super::server::http1;

/// `GET /metrics` from `addr`, with a bearer token if given: (head in lower case, body).
pub(crate) async fn scrape(addr: &str, token: Option<&str>) -> (String, String) {
    let authorization = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let request = format!(
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\n{authorization}Connection: close\r\n\r\n"
    );
    let (head, body) = http1(addr, request.into_bytes()).await;
    (head, String::from_utf8(body).expect("a UTF-8 document"))
}

/// Every sample of a document, by name and sorted labels (`name{a="x",b="y"}`), parsed
/// by `prometheus-parse`; histograms give their `_count` and `_sum`.
pub(crate) fn samples(text: &str) -> HashMap<String, f64> {
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let parsed = prometheus_parse::Scrape::parse(lines).expect("a valid text-format document");
    let mut samples = HashMap::new();
    for sample in parsed.samples {
        let mut labels: Vec<String> = sample
            .labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{v}\""))
            .collect();
        labels.sort();
        let key = |suffix: &str| format!("{}{suffix}{{{}}}", sample.metric, labels.join(","));
        match sample.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => {
                samples.insert(key(""), v);
            }
            prometheus_parse::Value::Histogram(buckets) => {
                let count = buckets.iter().map(|b| b.count).fold(0.0, f64::max);
                samples.insert(key("_count"), count);
            }
            prometheus_parse::Value::Summary(_) => {}
        }
    }
    samples
}

/// A sample's value; a missing sample fails the test with the document's names.
pub(crate) fn value(samples: &HashMap<String, f64>, key: &str) -> f64 {
    match samples.get(key) {
        Some(v) => *v,
        None => {
            let mut names: Vec<&String> = samples.keys().collect();
            names.sort();
            panic!("no sample {key} among {names:#?}");
        }
    }
}
