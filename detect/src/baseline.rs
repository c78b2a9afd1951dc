//! Online models of what is normal, each turning an observation into a calibrated score: a
//! tail probability in [0, 1], not an unexplained number.
//!
//! - [`VolumeModel`]: sizes (result bytes, argument sizes, session lengths) are heavy-tailed, so
//!   the model tracks `ln(1 + x)` with an exponentially weighted mean and variance and scores an
//!   observation by the normal CDF of its standardised log — a log-normal fit. 0.999 means
//!   "larger than 99.9% of what this key usually does".
//! - [`RateModel`]: events per bucket (one minute by default) with an exponentially weighted
//!   mean and variance, and a seasonal mean per hour of day and day of week; the score of a
//!   bucket holding `n` events is `P(N < n)` under a negative binomial law with the slot's mean
//!   and the overall dispersion (a Poisson when the counts are not over-dispersed). Agent
//!   traffic comes in sessions — busy minutes between idle ones — and a Poisson law would call
//!   every busy minute a burst; the negative binomial's fatter tail absorbs that and still
//!   puts a real burst near 1.
//! - [`RatioModel`]: how often calls are denied or fail; the count in the current window is
//!   scored against a binomial law with the agent's usual ratio.
//! - [`Vocabulary`]: the values an agent uses with decayed counts — novelty and rarity.
//!
//! All forget exponentially (a half-life in observations or buckets) so behaviour may drift,
//! and all abstain during a warm-up (`None`) rather than alarm on no history. None depends on
//! absolute time, only on differences from the agent's first event, so shifting every
//! timestamp changes nothing.

use statrs::distribution::{Binomial, DiscreteCDF, NegativeBinomial, Poisson};
use statrs::function::erf::erfc;

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
    // Single precision: the state of 100 000s of agents is what must stay small, and the
    // log of a size needs no more than 7 digits.
    n: u32,
    mean: f32,
    var: f32,
    alpha: f32,
    /// A floor on the spread of the log: a key that always sends the same size is not
    /// infinitely surprised by one byte more.
    floor: f32,
}

impl VolumeModel {
    /// A model forgetting with the given half-life, in observations.
    pub fn new(half_life: f64) -> VolumeModel {
        VolumeModel {
            n: 0,
            mean: 0.0,
            var: 0.0,
            alpha: alpha(half_life) as f32,
            floor: 0.05,
        }
    }

    /// Sets the floor on the spread of `ln(1 + x)` (default 0.05, about 5%): for counts such
    /// as calls per session, where a few more is ordinary, a wider floor.
    pub fn with_min_spread(mut self, floor: f64) -> VolumeModel {
        self.floor = floor.max(0.0) as f32;
        self
    }

    /// Observations seen.
    pub fn count(&self) -> u64 {
        u64::from(self.n)
    }

    /// The typical value (the geometric-mean-like centre, back-transformed).
    pub fn typical(&self) -> f64 {
        f64::from(self.mean).exp() - 1.0
    }

    /// The tail probability of `x` (near 1: unusually large; near 0: unusually small), or
    /// `None` during warm-up.
    pub fn score(&self, x: f64) -> Option<f64> {
        if u64::from(self.n) < VOLUME_WARMUP || !x.is_finite() {
            return None;
        }
        self.score_log(log_size(x))
    }

    /// Learns an observation.
    pub fn update(&mut self, x: f64) {
        if x.is_finite() {
            self.update_log(log_size(x));
        }
    }

    /// [`VolumeModel::score`] and [`VolumeModel::typical`] before `x`, then
    /// [`VolumeModel::update`] with it: the same results with the logarithm taken once.
    pub fn observe(&mut self, x: f64) -> Option<(f64, f64)> {
        if !x.is_finite() {
            return None;
        }
        let y = log_size(x);
        let scored = if u64::from(self.n) < VOLUME_WARMUP {
            None
        } else {
            self.score_log(y).map(|s| (s, self.typical()))
        };
        self.update_log(y);
        scored
    }

    fn score_log(&self, y: f64) -> Option<f64> {
        let sd = f64::from(self.var).sqrt().max(f64::from(self.floor));
        let z = (y - f64::from(self.mean)) / sd;
        // The standard normal's CDF as statrs computes it (`Normal::cdf` with mean 0 and
        // deviation 1, the same expression), without building and checking a `Normal` for
        // each of the three or four scores an event gets.
        Some(0.5 * erfc((0.0 - z) / std::f64::consts::SQRT_2))
    }

    fn update_log(&mut self, y: f64) {
        self.n = self.n.saturating_add(1);
        if self.n == 1 {
            self.mean = y as f32;
            self.var = 0.0;
            return;
        }
        // Warm-up uses plain averages (alpha = 1/n) so early values weigh as they should.
        let a = f64::from(self.alpha).max(1.0 / f64::from(self.n));
        let (mean, var) = (f64::from(self.mean), f64::from(self.var));
        let d = y - mean;
        self.mean = (mean + a * d) as f32;
        self.var = ((1.0 - a) * (var + a * d * d)) as f32;
    }
}

/// Whole numbers below this have their `ln(1 + x)` in [`SMALL_LOG`].
const SMALL: usize = 256;

/// `ln(1 + n)` for every whole `n` below [`SMALL`], as `f64::ln_1p` gives it.
static SMALL_LOG: std::sync::LazyLock<[f64; SMALL]> =
    std::sync::LazyLock::new(|| std::array::from_fn(|n| (n as f64).ln_1p()));

/// `ln(1 + max(x, 0))`, the scale a [`VolumeModel`] learns on. Session lengths and breadths
/// are small whole numbers, scored on every call: theirs come from a table of the same
/// values (a logarithm was about a tenth of the profile's time per event).
fn log_size(x: f64) -> f64 {
    let x = x.max(0.0);
    // `as` saturates: only a whole number below the table's size comes back unchanged.
    let n = x as usize;
    if n < SMALL && n as f64 == x {
        SMALL_LOG[n]
    } else {
        x.ln_1p()
    }
}

/// Buckets per hour-of-day slot before the slot's own mean outweighs the agent's overall
/// rate (shrinkage towards the overall rate: an hour seen twice says little).
const HOUR_PRIOR: f64 = 120.0;
/// Buckets per day-of-week slot before the day's own mean outweighs the overall rate.
const DAY_PRIOR: f64 = 1440.0;
const HOUR_NS: i64 = 3_600_000_000_000;
const DAY_NS: i64 = 24 * HOUR_NS;

/// A negative binomial model of events per bucket, with exponential forgetting and a
/// seasonal profile: the mean count per bucket at each hour of the day and each day of the
/// week, each shrunk towards the overall mean by how much of that slot has been seen.
///
/// Hours and days are counted from the agent's first event (`origin`), not from the wall
/// clock, so the model is periodic with the right periods and yet shifting every timestamp
/// changes no score; [`RateModel::hour_of_day`] maps a slot back to UTC for display.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RateModel {
    bucket_ns: i64,
    /// Buckets are counted from the first event (`NONE` before it), so that shifting every
    /// timestamp by any amount changes no score.
    origin: i64,
    /// The current bucket (`NONE` before the first event).
    bucket: i64,
    count: u32,
    buckets: u32,
    rate: f32,
    var: f32,
    alpha: f32,
    /// Mean per bucket at each hour of the day. Every bucket, quiet ones included, is learnt
    /// in order, so each slot has seen `buckets / 24` of them (and each day `buckets / 7`):
    /// no per-slot counts need be kept.
    hours: [f32; 24],
    days: [f32; 7],
    /// The current bucket's law summed up to its count so far (not persisted: rebuilt the
    /// same way after a restore).
    #[serde(skip)]
    walk: CdfWalk,
}

/// The count law of a bucket.
#[derive(Clone, Copy, Debug)]
enum CountLaw {
    Poisson(f64),
    /// `r`, `p` as statrs parametrises it.
    NegativeBinomial(f64, f64),
}

impl CountLaw {
    fn pmf0(self) -> f64 {
        match self {
            CountLaw::Poisson(mu) => (-mu).exp(),
            CountLaw::NegativeBinomial(r, p) => p.powf(r),
        }
    }

    /// `pmf(k + 1) / pmf(k)`.
    fn step(self, k: u32) -> f64 {
        let k = f64::from(k);
        match self {
            CountLaw::Poisson(mu) => mu / (k + 1.0),
            CountLaw::NegativeBinomial(r, p) => (k + r) / (k + 1.0) * (1.0 - p),
        }
    }

    /// `P(N < n)` computed directly.
    fn below(self, n: u64) -> Option<f64> {
        if n == 0 {
            return Some(0.0);
        }
        match self {
            CountLaw::Poisson(mu) => Poisson::new(mu).ok().map(|d| d.cdf(n - 1)),
            CountLaw::NegativeBinomial(r, p) => {
                NegativeBinomial::new(r, p).ok().map(|d| d.cdf(n - 1))
            }
        }
    }
}

/// `P(N < k)` for the bucket's law, walked up one count at a time: a bucket's count grows
/// by one per event, so each score costs one multiplication instead of an incomplete beta
/// function (≈ 0.3 µs, as much as the rest of the profile update).
///
/// It also keeps the bucket's law and expected count: both hold until the next bucket is
/// learnt, and deriving them (the seasonal slots' shrinkage) cost as much as the walk.
#[derive(Clone, Debug)]
struct CdfWalk {
    ready: bool,
    k: u32,
    below: f64,
    at: f64,
    law: CountLaw,
    expected: f64,
}

impl Default for CdfWalk {
    fn default() -> CdfWalk {
        CdfWalk {
            ready: false,
            k: 0,
            below: 0.0,
            at: 0.0,
            law: CountLaw::Poisson(0.0),
            expected: 0.0,
        }
    }
}

impl PartialEq for CdfWalk {
    /// A cache: equal whatever it holds, so that models compare by what they learnt.
    fn eq(&self, _: &CdfWalk) -> bool {
        true
    }
}

/// "Not yet" for the time fields of the models.
const NONE: i64 = i64::MIN;

impl RateModel {
    /// A model with buckets of `bucket_ns` and a half-life in buckets.
    pub fn new(bucket_ns: i64, half_life: f64) -> RateModel {
        RateModel {
            bucket_ns: bucket_ns.max(1),
            origin: NONE,
            bucket: NONE,
            count: 0,
            buckets: 0,
            rate: 0.0,
            var: 0.0,
            alpha: alpha(half_life) as f32,
            hours: [0.0; 24],
            days: [0.0; 7],
            walk: CdfWalk::default(),
        }
    }

    /// The learnt mean events per bucket, over all hours.
    pub fn rate(&self) -> f64 {
        f64::from(self.rate)
    }

    /// Buckets learnt.
    pub fn buckets(&self) -> u64 {
        u64::from(self.buckets)
    }

    /// The first event's time (ns), which anchors buckets and seasonal slots.
    pub fn origin(&self) -> Option<i64> {
        (self.origin != NONE).then_some(self.origin)
    }

    fn slots(&self, b: i64) -> (usize, usize) {
        let off = b.saturating_mul(self.bucket_ns);
        (
            off.div_euclid(HOUR_NS).rem_euclid(24) as usize,
            off.div_euclid(DAY_NS).rem_euclid(7) as usize,
        )
    }

    fn learn(&mut self, b: i64, n: u32) {
        self.walk.ready = false;
        self.buckets = self.buckets.saturating_add(1);
        let a = f64::from(self.alpha).max(1.0 / f64::from(self.buckets));
        let (rate, var) = (f64::from(self.rate), f64::from(self.var));
        let d = f64::from(n) - rate;
        self.rate = (rate + a * d) as f32;
        self.var = ((1.0 - a) * (var + a * d * d)) as f32;
        let (h, day) = self.slots(b);
        // Each slot forgets over about a week (hours) or a month (days) of its own buckets.
        let ah = (1.0 / self.hour_buckets(h)).max(1.0 / 420.0) as f32;
        self.hours[h] += ah * (n as f32 - self.hours[h]);
        let ad = (1.0 / self.day_buckets(day)).max(1.0 / 5760.0) as f32;
        self.days[day] += ad * (n as f32 - self.days[day]);
    }

    /// Buckets learnt in hour slot `h` (buckets are learnt in order from the origin).
    fn hour_buckets(&self, h: usize) -> f64 {
        self.slot_buckets(h, HOUR_NS, 24)
    }

    fn day_buckets(&self, d: usize) -> f64 {
        self.slot_buckets(d, DAY_NS, 7)
    }

    fn slot_buckets(&self, slot: usize, slot_ns: i64, slots: i64) -> f64 {
        let per_slot = (slot_ns / self.bucket_ns).max(1);
        let cycle = per_slot * slots;
        let done = i64::from(self.buckets);
        let full = done / cycle * per_slot;
        let rest = (done % cycle - slot as i64 * per_slot).clamp(0, per_slot);
        (full + rest).max(1) as f64
    }

    /// The expected events in bucket `b`: the overall rate adjusted by the hour and day
    /// slots, each in proportion to how much of it has been seen.
    fn expected_at(&self, b: i64) -> f64 {
        let m = self.rate().max(0.05);
        let (h, d) = self.slots(b);
        let hn = self.hour_buckets(h).min(420.0);
        let hour = (hn * f64::from(self.hours[h]) + HOUR_PRIOR * m) / (hn + HOUR_PRIOR);
        let dn = self.day_buckets(d).min(5760.0);
        let day = (dn * f64::from(self.days[d]) + DAY_PRIOR * m) / (dn + DAY_PRIOR);
        (hour * day / m).max(0.05)
    }

    /// The expected events in the current bucket.
    pub fn expected(&self) -> f64 {
        if self.walk.ready {
            return self.walk.expected;
        }
        self.expected_at(self.bucket.max(0))
    }

    /// The learnt mean per bucket at each hour of the day, in UTC, for display.
    pub fn hour_of_day(&self) -> [f64; 24] {
        let mut out = [0.0; 24];
        let Some(origin) = self.origin() else {
            return out;
        };
        let shift = origin.div_euclid(HOUR_NS).rem_euclid(24) as usize;
        for (slot, v) in self.hours.iter().enumerate() {
            out[(slot + shift) % 24] = f64::from(*v);
        }
        out
    }

    /// Counts an event at `t` (ns). Returns the events in its bucket so far and the score of
    /// that count (`None` during warm-up).
    pub fn observe(&mut self, t: i64) -> (u64, Option<f64>) {
        if self.origin == NONE {
            self.origin = t;
        }
        let b = t.saturating_sub(self.origin).div_euclid(self.bucket_ns);
        let cur = self.bucket;
        if cur == NONE {
            self.bucket = b;
        } else if b > cur {
            self.learn(cur, self.count);
            // Quiet buckets in between count as zeros, at most a week's worth; past that the
            // slots stay aligned by skipping whole weeks.
            let gap = b - cur - 1;
            let week = (7 * DAY_NS / self.bucket_ns).max(1);
            let skip = if gap > week {
                (gap - week) / week * week
            } else {
                0
            };
            for q in (1 + skip)..=gap {
                self.learn(cur + q, 0);
            }
            self.bucket = b;
            self.count = 0;
        }
        // A late event counts in the current bucket.
        self.count = self.count.saturating_add(1);
        (u64::from(self.count), self.walk_score(self.count))
    }

    /// Starts afresh on the bucket clock (a new agent inheriting a peer's model).
    pub fn restart(&mut self) {
        self.bucket = NONE;
        self.count = 0;
        self.walk.ready = false;
    }

    /// The law of the current bucket's count, or `None` during warm-up.
    fn law(&self) -> Option<CountLaw> {
        if u64::from(self.buckets) < RATE_WARMUP {
            return None;
        }
        let mu = self.expected_at(self.bucket.max(0));
        // Over-dispersion of the counts (variance over mean), carried to this slot's mean.
        // Measured against the learnt mean itself, not the floored `m`: an agent that calls
        // in rare bursts has a mean far below the floor, and dividing by the floor made its
        // counts look barely over-dispersed, so a burst like every other one scored as
        // a one-in-a-million count.
        let dispersion = f64::from(self.var) / self.rate().max(1e-9);
        if dispersion <= 1.05 {
            return Some(CountLaw::Poisson(mu));
        }
        // Moments matched: mean r(1-p)/p = mu, variance r(1-p)/p² = dispersion·mu.
        Some(CountLaw::NegativeBinomial(
            mu / (dispersion - 1.0),
            1.0 / dispersion,
        ))
    }

    /// The tail probability of `n` events in the current bucket, or `None` during warm-up.
    pub fn score(&self, n: u64) -> Option<f64> {
        self.law()?.below(n)
    }

    /// [`RateModel::score`] of the current bucket's count, walked up incrementally.
    fn walk_score(&mut self, n: u32) -> Option<f64> {
        let (law, expected) = if self.walk.ready {
            (self.walk.law, self.walk.expected)
        } else {
            (self.law()?, self.expected_at(self.bucket.max(0)))
        };
        let w = &mut self.walk;
        if !w.ready || w.k > n {
            *w = CdfWalk {
                ready: true,
                k: 0,
                below: 0.0,
                at: law.pmf0(),
                law,
                expected,
            };
        }
        // Where the law's first terms underflow, the walk cannot start: compute directly.
        if w.at < 1e-250 && w.k == 0 {
            return law.below(u64::from(n));
        }
        while w.k < n {
            w.below += w.at;
            w.at *= law.step(w.k);
            w.k += 1;
        }
        Some(w.below.min(1.0))
    }
}

/// Calls with at least this much history before a ratio scores.
pub const RATIO_WARMUP: f64 = 100.0;

/// How often something happens among an agent's calls (denials, errors), and how unusual
/// the count in the current window is: `P(X < k)` for `X ~ Binomial(n, p)`, where `n` and
/// `k` are the window's calls and hits and `p` the agent's ratio before this window (with a
/// prior of 1 in 50, so an agent that never failed is not infinitely surprised by one
/// failure).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RatioModel {
    window_ns: i64,
    window: i64,
    n: u32,
    k: u32,
    trials: f32,
    hits: f32,
    decay: f32,
}

impl RatioModel {
    /// A model with windows of `window_ns` and a half-life in calls.
    pub fn new(window_ns: i64, half_life_calls: f64) -> RatioModel {
        RatioModel {
            window_ns: window_ns.max(1),
            window: NONE,
            n: 0,
            k: 0,
            trials: 0.0,
            hits: 0.0,
            decay: 0.5f64.powf(1.0 / half_life_calls.max(1.0)) as f32,
        }
    }

    /// The learnt ratio (with its prior).
    pub fn ratio(&self) -> f64 {
        (f64::from(self.hits) + 1.0) / (f64::from(self.trials) + 50.0)
    }

    /// Calls learnt (decayed).
    pub fn trials(&self) -> f64 {
        f64::from(self.trials)
    }

    fn close(&mut self) {
        let keep = f64::from(self.decay).powi(self.n.min(i32::MAX as u32) as i32);
        self.trials = (f64::from(self.trials) * keep + f64::from(self.n)) as f32;
        self.hits = (f64::from(self.hits) * keep + f64::from(self.k)) as f32;
        self.n = 0;
        self.k = 0;
    }

    /// Counts a call at `offset` ns from the agent's origin. Returns the window's hits so
    /// far and their score (`None` during warm-up or when this call is not a hit: only a hit
    /// can make the count more unusual).
    pub fn observe(&mut self, offset: i64, hit: bool) -> (u32, Option<f64>) {
        let w = offset.div_euclid(self.window_ns);
        if self.window == NONE {
            self.window = w;
        } else if w > self.window {
            self.close();
            self.window = w;
        }
        self.n = self.n.saturating_add(1);
        self.k = self.k.saturating_add(u32::from(hit));
        if !hit || f64::from(self.trials) < RATIO_WARMUP {
            return (self.k, None);
        }
        let p = self.ratio().clamp(1e-6, 1.0 - 1e-6);
        let score = Binomial::new(p, u64::from(self.n))
            .ok()
            .map(|d| d.cdf(u64::from(self.k) - 1));
        (self.k, score)
    }

    /// Starts afresh on the window clock (a new agent inheriting a peer's model).
    pub fn restart(&mut self) {
        self.window = NONE;
        self.n = 0;
        self.k = 0;
    }
}

/// Values an agent uses (tools, servers, recipients), as 64-bit hashes with decayed counts:
/// novelty is absence, rarity the value's share of the decayed total.
///
/// Counts forget with a half-life in observations. Rather than decaying every count on each
/// observation, each observation adds a weight that grows geometrically (the classic forward
/// decay); all weights are renormalised when they grow large. The table is bounded: when
/// full, the least used half is dropped (counted in `pruned`) and novelty is no longer
/// claimed for this vocabulary (a dropped value would look new again); shares still are.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Vocabulary {
    counts: rustc_hash::FxHashMap<u64, f32>,
    total: f64,
    weight: f64,
    growth: f32,
    observations: u32,
    pruned: u32,
}

/// What a vocabulary knew of a value before it was counted.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Seen {
    /// Never seen (or `None` once the vocabulary has dropped values).
    pub new: Option<bool>,
    /// Its share of the decayed total, in [0, 1].
    pub share: f64,
}

impl Vocabulary {
    /// A vocabulary forgetting with the given half-life, in observations.
    pub fn new(half_life: f64) -> Vocabulary {
        Vocabulary {
            counts: rustc_hash::FxHashMap::default(),
            total: 0.0,
            weight: 1.0,
            growth: 2f64.powf(1.0 / half_life.max(1.0)) as f32,
            observations: 0,
            pruned: 0,
        }
    }

    /// Distinct values held.
    pub fn len(&self) -> usize {
        self.counts.len()
    }

    /// Whether nothing was seen.
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// Values counted.
    pub fn observations(&self) -> u64 {
        u64::from(self.observations)
    }

    /// Values dropped to stay under the bound.
    pub fn pruned(&self) -> u64 {
        u64::from(self.pruned)
    }

    /// Heap bytes held (the table's buckets and control bytes).
    pub fn heap_bytes(&self) -> usize {
        let cap = self.counts.capacity();
        if cap == 0 {
            0
        } else {
            // hashbrown: one control byte per bucket plus a group of 16, buckets a power of two.
            let buckets = (cap * 8 / 7).next_power_of_two();
            buckets * (std::mem::size_of::<(u64, f32)>() + 1) + 16
        }
    }

    /// The share of `h` without counting it.
    pub fn share(&self, h: u64) -> f64 {
        if self.total <= 0.0 {
            return 0.0;
        }
        self.counts
            .get(&h)
            .map_or(0.0, |c| (f64::from(*c) / self.total).min(1.0))
    }

    /// Whether `h` was seen, and its share, then counts it (at most `cap` values are held).
    pub fn observe(&mut self, h: u64, cap: usize) -> Seen {
        self.observations = self.observations.saturating_add(1);
        self.weight *= f64::from(self.growth);
        if self.weight > 1e30 {
            let w = self.weight;
            for c in self.counts.values_mut() {
                *c = (f64::from(*c) / w) as f32;
            }
            self.total /= w;
            self.weight = 1.0;
        }
        let total = self.total;
        self.total += self.weight;
        // One lookup on the common path: the value is known.
        if let Some(c) = self.counts.get_mut(&h) {
            let share = if total > 0.0 {
                (f64::from(*c) / total).min(1.0)
            } else {
                0.0
            };
            *c += self.weight as f32;
            return Seen {
                new: (self.pruned == 0).then_some(false),
                share,
            };
        }
        if self.counts.len() >= cap {
            self.prune();
            self.total += self.weight;
        }
        self.counts.insert(h, self.weight as f32);
        Seen {
            new: (self.pruned == 0).then_some(true),
            share: 0.0,
        }
    }

    fn prune(&mut self) {
        let mut w: Vec<f32> = self.counts.values().copied().collect();
        let mid = w.len() / 2;
        let (_, cut, _) = w.select_nth_unstable_by(mid, f32::total_cmp);
        let cut = *cut;
        let before = self.counts.len();
        self.counts.retain(|_, c| *c > cut);
        self.pruned = self
            .pruned
            .saturating_add((before - self.counts.len()) as u32);
        self.total = self.counts.values().map(|c| f64::from(*c)).sum();
    }

    /// The most used values (hash, share), most used first.
    pub fn top(&self, n: usize) -> Vec<(u64, f64)> {
        let mut v: Vec<(u64, f64)> = self.counts.keys().map(|h| (*h, self.share(*h))).collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        v.truncate(n);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table gives what `ln_1p` gives, and only whole numbers below its size use it.
    #[test]
    fn log_size_is_ln_1p() {
        for i in 0..600 {
            for x in [
                f64::from(i),
                f64::from(i) + 0.5,
                f64::from(i) * 1e3,
                -f64::from(i),
            ] {
                assert_eq!(log_size(x).to_bits(), x.max(0.0).ln_1p().to_bits(), "{x}");
            }
        }
    }

    /// A volume score is statrs's standard normal CDF of the z-score, bit for bit.
    #[test]
    fn volume_scores_are_statrs_normal_cdf() {
        use statrs::distribution::{ContinuousCDF, Normal};
        let mut m = VolumeModel::new(200.0);
        for i in 0..100 {
            m.update(f64::from(1000 + (i * 37) % 400));
        }
        let n = Normal::new(0.0, 1.0).unwrap();
        for x in [0.0, 1.0, 500.0, 999.0, 1000.0, 1200.0, 1e4, 1e6, 1e12] {
            let y = f64::ln_1p(x);
            let sd = f64::from(m.var).sqrt().max(f64::from(m.floor));
            let want = n.cdf((y - f64::from(m.mean)) / sd);
            assert_eq!(m.score(x).unwrap().to_bits(), want.to_bits(), "{x}");
        }
    }

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
    fn observing_a_volume_is_scoring_then_learning_it() {
        let (mut one, mut two) = (VolumeModel::new(50.0), VolumeModel::new(50.0));
        for i in 0..300u32 {
            let x = f64::from((i * 7919) % 5000) + if i == 250 { 1e7 } else { 0.0 };
            let want = two.score(x).map(|s| (s, two.typical()));
            two.update(x);
            assert_eq!(one.observe(x), want, "observation {i}");
            assert_eq!(one, two);
        }
        assert_eq!(one.observe(f64::NAN), None);
        assert_eq!(one, two, "a value that is not a number is not learnt");
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

    /// Three weeks of an agent busy on weekday working hours: the same minute's count is more
    /// unusual at night than at noon, and on a Sunday than on a Tuesday.
    #[test]
    fn seasonality_by_hour_and_day() {
        let minute = 60_000_000_000i64;
        let mut r = RateModel::new(minute, 600.0);
        let busy = |m: i64| {
            let (day, hour) = (m / 1440 % 7, m / 60 % 24);
            day < 5 && (9..17).contains(&hour)
        };
        // Minute 0 is a Monday 00:00 (the origin anchors the slots).
        for m in 0..21 * 1440i64 {
            if busy(m) {
                for k in 0..3 {
                    r.observe(m * minute + k * 10_000_000_000);
                }
            } else if m % 97 == 0 {
                r.observe(m * minute);
            }
        }
        let score_at = |m: i64| {
            let mut r = r.clone();
            let mut last = None;
            for k in 0..4 {
                last = r.observe(m * minute + k * 1_000_000_000).1;
            }
            last.unwrap()
        };
        let week = 21 * 1440i64;
        let tuesday_noon = week + 1440 + 12 * 60;
        let tuesday_3am = week + 1440 + 3 * 60;
        let sunday_noon = week + 6 * 1440 + 12 * 60;
        let (noon, night, sunday) = (
            score_at(tuesday_noon),
            score_at(tuesday_3am),
            score_at(sunday_noon),
        );
        assert!(night > noon, "night {night} vs noon {noon}");
        assert!(sunday > noon, "sunday {sunday} vs tuesday {noon}");
        let hours = r.hour_of_day();
        assert!(hours[12] > 5.0 * hours[3], "{hours:?}");
    }

    #[test]
    fn the_incremental_score_is_the_direct_one() {
        for (gap, burst) in [(30_000_000_000i64, 400i64), (7_000_000_000, 3_000)] {
            let mut r = RateModel::new(60_000_000_000, 60.0);
            let mut t = 0i64;
            for i in 0..2_000i64 {
                t += gap + (i % 11) * 1_000_000_000;
                let (n, s) = r.observe(t);
                if let (Some(s), Some(d)) = (s, r.score(n)) {
                    assert!((s - d).abs() < 1e-9, "{s} vs {d} at {n}");
                }
                // The bucket's expected count, kept with the walk, is the one derived afresh.
                assert_eq!(r.expected(), r.expected_at(r.bucket.max(0)));
            }
            for _ in 0..burst {
                t += 10_000_000;
                let (n, s) = r.observe(t);
                let d = r.score(n).unwrap();
                assert!((s.unwrap() - d).abs() < 1e-9, "{s:?} vs {d} at {n}");
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
