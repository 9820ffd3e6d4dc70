//! `zingqueue bench …`: measurements printed beside the raw ceiling of the same machine, taken in
//! the same run, so that a shared, noisy machine still gives a fair ratio. Every figure is the
//! median of several runs (all runs are printed too).

pub mod api;
pub mod ceiling;
pub mod chaos;
pub mod relay;
pub mod replay;
pub mod sale;
pub mod store;

use std::fmt;

pub use crate::http::Connection;

/// One measured figure: the median of its runs.
#[derive(Debug, Clone)]
pub struct Figure {
    pub runs: Vec<f64>,
}

impl Figure {
    pub fn new(runs: Vec<f64>) -> Figure {
        Figure { runs }
    }

    pub fn median(&self) -> f64 {
        let mut sorted = self.runs.clone();
        sorted.sort_by(f64::total_cmp);
        match sorted.len() {
            0 => f64::NAN,
            n if !n.is_multiple_of(2) => sorted[n / 2],
            n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
        }
    }
}

impl fmt::Display for Figure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let runs: Vec<String> = self.runs.iter().map(|r| rate(*r)).collect();
        write!(f, "{}/s (runs: {})", rate(self.median()), runs.join(", "))
    }
}

/// A rate with thousands separators.
pub fn rate(per_second: f64) -> String {
    let whole = per_second.round() as u64;
    let digits = whole.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// One line of the final report: ours beside the ceiling.
pub struct Comparison {
    pub backend: &'static str,
    pub what: String,
    pub ours: Figure,
    pub ceiling_name: &'static str,
    pub ceiling: Figure,
    pub target: Option<f64>,
    pub latency: Option<String>,
}

impl Comparison {
    pub fn ratio(&self) -> f64 {
        self.ours.median() / self.ceiling.median()
    }

    pub fn print(&self) {
        let verdict = match self.target {
            Some(target) if self.ratio() >= target => format!(" (target ≥ {target:.2}: met)"),
            Some(target) => format!(" (target ≥ {target:.2}: NOT met)"),
            None => String::new(),
        };
        println!("{:<8} {}", self.backend, self.what);
        println!("         zingqueue   {}", self.ours);
        if let Some(latency) = &self.latency {
            println!("                     latency {latency}");
        }
        println!("         {:<11} {}", self.ceiling_name, self.ceiling);
        println!("         ratio       {:.2}{verdict}", self.ratio());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_runs() {
        assert_eq!(Figure::new(vec![3.0, 1.0, 2.0]).median(), 2.0);
        assert_eq!(Figure::new(vec![4.0, 1.0, 2.0, 3.0]).median(), 2.5);
    }

    #[test]
    fn rates_have_thousands_separators() {
        assert_eq!(rate(1234567.4), "1,234,567");
        assert_eq!(rate(999.0), "999");
        assert_eq!(rate(1000.0), "1,000");
    }
}
