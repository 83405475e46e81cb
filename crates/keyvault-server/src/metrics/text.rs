//! The Prometheus text exposition format, version 0.0.4, written by hand: `# HELP` and `# TYPE` once per
//! family, then one line per sample; label values and help texts escaped; histograms as cumulative
//! `_bucket{le="…"}` lines ending with `le="+Inf"`, then `_sum` and `_count`.

use std::fmt::Write;

/// The `Content-Type` of an exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A metric family's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A histogram read at one moment: `counts[i]` observations fell in bucket `i` (not cumulative): at most
/// `bounds[i]` and more than `bounds[i - 1]`; the last count is above every bound (`+Inf`). `sum` is in the
/// family's unit (seconds for `_seconds`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HistogramSnapshot {
    pub bounds: &'static [f64],
    pub counts: Vec<u64>,
    pub sum: f64,
}

impl HistogramSnapshot {
    /// Observations in all.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Adds another snapshot of the same bounds (e.g. another shard's).
    pub fn add(&mut self, other: &HistogramSnapshot) {
        if self.counts.len() < other.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.sum += other.sum;
    }
}

/// An exposition being written. Families must not repeat (each is written whole, once).
#[derive(Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    pub fn new() -> Exposition {
        Exposition::default()
    }

    /// The text written so far.
    pub fn finish(self) -> String {
        self.out
    }

    /// Starts a family: its `# HELP` and `# TYPE` lines.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        self.out.push_str("# HELP ");
        self.out.push_str(name);
        self.out.push(' ');
        for c in help.chars() {
            match c {
                '\\' => self.out.push_str("\\\\"),
                '\n' => self.out.push_str("\\n"),
                c => self.out.push(c),
            }
        }
        self.out.push_str("\n# TYPE ");
        self.out.push_str(name);
        self.out.push(' ');
        self.out.push_str(kind.as_str());
        self.out.push('\n');
    }

    /// One sample of an integer value.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        self.name_and_labels(name, labels, None);
        self.out.push(' ');
        self.out.push_str(itoa::Buffer::new().format(value));
        self.out.push('\n');
    }

    /// One sample of a floating-point value.
    pub fn sample_f64(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.name_and_labels(name, labels, None);
        self.out.push(' ');
        push_f64(&mut self.out, value);
        self.out.push('\n');
    }

    /// A histogram's samples (after [`Exposition::family`] with [`Kind::Histogram`]): the cumulative
    /// buckets, `_sum` and `_count`, each with `labels`.
    pub fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &HistogramSnapshot) {
        let bucket = format!("{name}_bucket");
        let mut cumulative = 0u64;
        let mut le = String::new();
        for (i, count) in h.counts.iter().enumerate() {
            cumulative += count;
            le.clear();
            match h.bounds.get(i) {
                Some(&bound) => push_f64(&mut le, bound),
                None => le.push_str("+Inf"),
            }
            self.name_and_labels(&bucket, labels, Some(&le));
            self.out.push(' ');
            self.out.push_str(itoa::Buffer::new().format(cumulative));
            self.out.push('\n');
        }
        if h.counts.len() <= h.bounds.len() {
            // No `+Inf` count given: the bucket holds every observation (Prometheus requires it).
            self.name_and_labels(&bucket, labels, Some("+Inf"));
            self.out.push(' ');
            self.out.push_str(itoa::Buffer::new().format(cumulative));
            self.out.push('\n');
        }
        self.sample_f64(&format!("{name}_sum"), labels, h.sum);
        self.sample(&format!("{name}_count"), labels, cumulative);
    }

    fn name_and_labels(&mut self, name: &str, labels: &[(&str, &str)], le: Option<&str>) {
        self.out.push_str(name);
        if labels.is_empty() && le.is_none() {
            return;
        }
        self.out.push('{');
        let mut first = true;
        for (key, value) in labels.iter().copied().chain(le.map(|le| ("le", le))) {
            if !first {
                self.out.push(',');
            }
            first = false;
            self.out.push_str(key);
            self.out.push_str("=\"");
            for c in value.chars() {
                match c {
                    '\\' => self.out.push_str("\\\\"),
                    '"' => self.out.push_str("\\\""),
                    '\n' => self.out.push_str("\\n"),
                    c => self.out.push(c),
                }
            }
            self.out.push('"');
        }
        self.out.push('}');
    }
}

/// A float as Prometheus reads it: `+Inf`, `-Inf`, `NaN`, or Rust's shortest decimal form (never an exponent).
fn push_f64(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v == f64::INFINITY {
        out.push_str("+Inf");
    } else if v == f64::NEG_INFINITY {
        out.push_str("-Inf");
    } else {
        let _ = write!(out, "{v}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_samples_and_escaping() {
        let mut e = Exposition::new();
        e.family(
            "kv_things_total",
            Kind::Counter,
            "Things.\nWith a \\ in it.",
        );
        e.sample("kv_things_total", &[], 3);
        e.sample(
            "kv_things_total",
            &[("a", "x\"y"), ("b", "back\\slash\nnewline")],
            7,
        );
        e.family("kv_temp", Kind::Gauge, "A gauge.");
        e.sample_f64("kv_temp", &[("k", "v")], 1.5);
        e.sample_f64("kv_temp", &[("k", "w")], f64::INFINITY);
        e.sample_f64("kv_temp", &[("k", "z")], f64::NAN);
        assert_eq!(
            e.finish(),
            "# HELP kv_things_total Things.\\nWith a \\\\ in it.\n\
             # TYPE kv_things_total counter\n\
             kv_things_total 3\n\
             kv_things_total{a=\"x\\\"y\",b=\"back\\\\slash\\nnewline\"} 7\n\
             # HELP kv_temp A gauge.\n\
             # TYPE kv_temp gauge\n\
             kv_temp{k=\"v\"} 1.5\n\
             kv_temp{k=\"w\"} +Inf\n\
             kv_temp{k=\"z\"} NaN\n"
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_end_with_inf() {
        static BOUNDS: [f64; 3] = [0.0005, 0.01, 2.5];
        let h = HistogramSnapshot {
            bounds: &BOUNDS,
            counts: vec![2, 0, 3, 1],
            sum: 7.25,
        };
        assert_eq!(h.count(), 6);
        let mut e = Exposition::new();
        e.family("kv_d_seconds", Kind::Histogram, "Durations.");
        e.histogram("kv_d_seconds", &[("op", "get")], &h);
        assert_eq!(
            e.finish(),
            "# HELP kv_d_seconds Durations.\n\
             # TYPE kv_d_seconds histogram\n\
             kv_d_seconds_bucket{op=\"get\",le=\"0.0005\"} 2\n\
             kv_d_seconds_bucket{op=\"get\",le=\"0.01\"} 2\n\
             kv_d_seconds_bucket{op=\"get\",le=\"2.5\"} 5\n\
             kv_d_seconds_bucket{op=\"get\",le=\"+Inf\"} 6\n\
             kv_d_seconds_sum{op=\"get\"} 7.25\n\
             kv_d_seconds_count{op=\"get\"} 6\n"
        );
        // Without labels, and without a count above the last bound: `+Inf` is still written.
        let h = HistogramSnapshot {
            bounds: &BOUNDS,
            counts: vec![1, 1, 1],
            sum: 0.5,
        };
        let mut e = Exposition::new();
        e.histogram("kv_n", &[], &h);
        let text = e.finish();
        assert!(text.contains("kv_n_bucket{le=\"2.5\"} 3\nkv_n_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.ends_with("kv_n_sum 0.5\nkv_n_count 3\n"), "{text}");
    }

    #[test]
    fn snapshots_add_up() {
        static BOUNDS: [f64; 1] = [1.0];
        let mut a = HistogramSnapshot {
            bounds: &BOUNDS,
            counts: vec![1, 2],
            sum: 3.0,
        };
        a.add(&HistogramSnapshot {
            bounds: &BOUNDS,
            counts: vec![4, 5],
            sum: 0.5,
        });
        assert_eq!((a.counts.as_slice(), a.sum), (&[5, 7][..], 3.5));
    }
}
