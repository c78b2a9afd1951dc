//! Online models of what is normal, each turning an observation into a calibrated score: a
//! tail probability in [0, 1], not an unexplained number.
//!
//! - [`VolumeModel`]: sizes (result bytes, argument sizes, durations) are heavy-tailed, so the
//!   model tracks `ln(1 + x)` with an exponentially weighted mean and variance and scores an
//!   observation by the normal CDF of its standardised log — a log-normal fit. 0.999 means
//!   "larger than 99.9% of what this key usually does".
//! - [`RateModel`]: events per bucket (one minute by default) with an exponentially weighted
//!   mean and variance; the score of a bucket holding `n` events is `P(N < n)` under a negative
//!   binomial law with those moments (a Poisson when the counts are not over-dispersed). Agent
//!   traffic comes in sessions — busy minutes between idle ones — and a Poisson law would call
//!   every busy minute a burst; the negative binomial's fatter tail absorbs that and still
//!   puts a real burst near 1.
//!
//! Both forget exponentially (a half-life in observations or buckets) so behaviour may drift,
//! and both abstain during a warm-up (`score` is `None`) rather than alarm on no history. Neither
//! depends on absolute time, only on differences, so shifting every timestamp changes nothing.

use statrs::distribution::{ContinuousCDF, DiscreteCDF, NegativeBinomial, Normal, Poisson};

/// Observations before a volume model scores.
pub const VOLUME_WARMUP: u64 = 20;
/// Buckets before a rate model scores.
pub const RATE_WARMUP: u64 = 30;

fn alpha(half_life: f64) -> f64 {
    1.0 - 0.5f64.powf(1.0 / half_life.max(1.0))
}

/// A log-normal model of a size, with exponential forgetting.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct VolumeModel {
    n: u64,
    mean: f64,
    var: f64,
    alpha: f64,
}

impl VolumeModel {
    /// A model forgetting with the given half-life, in observations.
    pub fn new(half_life: f64) -> VolumeModel {
        VolumeModel {
            n: 0,
            mean: 0.0,
            var: 0.0,
            alpha: alpha(half_life),
        }
    }

    /// Observations seen.
    pub fn count(&self) -> u64 {
        self.n
    }

    /// The typical value (the geometric-mean-like centre, back-transformed).
    pub fn typical(&self) -> f64 {
        self.mean.exp() - 1.0
    }

    /// The tail probability of `x` (near 1: unusually large; near 0: unusually small), or
    /// `None` during warm-up.
    pub fn score(&self, x: f64) -> Option<f64> {
        if self.n < VOLUME_WARMUP || !x.is_finite() {
            return None;
        }
        let y = x.max(0.0).ln_1p();
        // A floor on the spread: a key that always sends the same size is not infinitely
        // surprised by one byte more.
        let sd = self.var.sqrt().max(0.05);
        let z = (y - self.mean) / sd;
        Normal::new(0.0, 1.0).ok().map(|n| n.cdf(z))
    }

    /// Learns an observation.
    pub fn update(&mut self, x: f64) {
        if !x.is_finite() {
            return;
        }
        let y = x.max(0.0).ln_1p();
        self.n += 1;
        if self.n == 1 {
            self.mean = y;
            self.var = 0.0;
            return;
        }
        // Warm-up uses plain averages (alpha = 1/n) so early values weigh as they should.
        let a = self.alpha.max(1.0 / self.n as f64);
        let d = y - self.mean;
        self.mean += a * d;
        self.var = (1.0 - a) * (self.var + a * d * d);
    }
}

/// A Poisson model of events per bucket, with exponential forgetting.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RateModel {
    bucket_ns: i64,
    /// Buckets are counted from the first event, so that shifting every timestamp by any
    /// amount changes no score.
    origin: Option<i64>,
    bucket: Option<i64>,
    count: u64,
    buckets: u64,
    rate: f64,
    var: f64,
    alpha: f64,
}

impl RateModel {
    /// A model with buckets of `bucket_ns` and a half-life in buckets.
    pub fn new(bucket_ns: i64, half_life: f64) -> RateModel {
        RateModel {
            bucket_ns: bucket_ns.max(1),
            origin: None,
            bucket: None,
            count: 0,
            buckets: 0,
            rate: 0.0,
            var: 0.0,
            alpha: alpha(half_life),
        }
    }

    /// The learnt mean events per bucket.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    fn learn(&mut self, n: u64) {
        self.buckets += 1;
        let a = self.alpha.max(1.0 / self.buckets as f64);
        let d = n as f64 - self.rate;
        self.rate += a * d;
        self.var = (1.0 - a) * (self.var + a * d * d);
    }

    /// Counts an event at `t` (ns). Returns the events in its bucket so far and the score of
    /// that count (`None` during warm-up).
    pub fn observe(&mut self, t: i64) -> (u64, Option<f64>) {
        let origin = *self.origin.get_or_insert(t);
        let b = t.saturating_sub(origin).div_euclid(self.bucket_ns);
        match self.bucket {
            None => self.bucket = Some(b),
            Some(cur) if b > cur => {
                self.learn(self.count);
                // Quiet buckets in between count as zeros, at most a few half-lives' worth.
                let gap = (b - cur - 1).min(10_000) as u64;
                for _ in 0..gap {
                    self.learn(0);
                }
                self.bucket = Some(b);
                self.count = 0;
            }
            // A late event counts in the current bucket.
            Some(_) => {}
        }
        self.count += 1;
        (self.count, self.score(self.count))
    }

    /// The tail probability of `n` events in a bucket, or `None` during warm-up.
    pub fn score(&self, n: u64) -> Option<f64> {
        if self.buckets < RATE_WARMUP {
            return None;
        }
        let m = self.rate.max(0.05);
        let v = self.var;
        if v <= m * 1.05 {
            return Poisson::new(m).ok().map(|p| p.cdf(n.saturating_sub(1)));
        }
        // Moments matched: mean r(1-p)/p = m, variance r(1-p)/p² = v.
        let p = m / v;
        let r = m * m / (v - m);
        NegativeBinomial::new(r, p)
            .ok()
            .map(|d| d.cdf(n.saturating_sub(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_scores_are_tail_probabilities() {
        let mut m = VolumeModel::new(1000.0);
        assert_eq!(m.score(10.0), None, "warm-up abstains");
        for i in 0..500 {
            m.update(1000.0 + (i % 7) as f64 * 50.0);
        }
        let typical = m.score(1100.0).unwrap();
        assert!(typical > 0.2 && typical < 0.8, "{typical}");
        assert!(m.score(1_000_000.0).unwrap() > 0.999);
        assert!(m.score(1.0).unwrap() < 0.001);
    }

    #[test]
    fn constant_behaviour_never_scores_high() {
        let mut m = VolumeModel::new(100.0);
        for _ in 0..1000 {
            if let Some(s) = m.score(512.0) {
                assert!(s <= 0.5 + 1e-9, "{s}");
            }
            m.update(512.0);
        }
        let mut r = RateModel::new(60_000_000_000, 60.0);
        for i in 0..3000i64 {
            let (_, s) = r.observe(i * 20_000_000_000);
            if let Some(s) = s {
                assert!(s < 0.99, "{s} at {i}");
            }
        }
    }

    #[test]
    fn scores_do_not_depend_on_absolute_time() {
        let times: Vec<i64> = (0..400i64)
            .map(|i| i * 7_919_000_000 + (i % 13) * 3_000_000_000)
            .collect();
        for shift in [0i64, 1, 29_999_999_999, -1_000_000_000_000_000] {
            let mut a = RateModel::new(60_000_000_000, 50.0);
            let mut b = RateModel::new(60_000_000_000, 50.0);
            for &t in &times {
                assert_eq!(a.observe(t), b.observe(t + shift), "shift {shift}");
            }
        }
    }

    #[test]
    fn bursts_score_near_one() {
        let mut r = RateModel::new(60_000_000_000, 60.0);
        for i in 0..200i64 {
            r.observe(i * 30_000_000_000);
        }
        let t = 200 * 30_000_000_000i64;
        let mut last = 0.0;
        for k in 0..50 {
            last = r.observe(t + k * 100_000_000).1.unwrap();
        }
        assert!(last > 0.999, "{last}");
    }
}
