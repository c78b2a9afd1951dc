//! Compiled forms of the queries that span several events: `sequence`, `sample` and
//! `threshold`. The detectors in `cordon-detect` run them; this module only checks and
//! compiles them.
//!
//! A step's condition is split in two: the conjuncts that read only the event (compiled into
//! the step's [`EventMatcher`], indexed and evaluated like a filter rule) and those that
//! compare with earlier steps (`$1.audit.target`, `lineage($1)`), evaluated only when the event
//! could extend an open partial match. `with runs=N` is expanded into N identical steps.

use std::time::Duration;

use cordon_ingest::{Category, FieldRef};

use crate::ast::{BinOp, Expr, Measure, Sample, Sequence, Span, Step, Threshold};
use crate::compile::{Compiler, EventMatcher};
use crate::error::QueryError;
use crate::eval::{CmpOp, Pred};

/// A join key: a field, and whether a null value still joins (`?field`).
#[derive(Clone, Debug, PartialEq)]
pub struct JoinKey {
    /// The field.
    pub field: FieldRef,
    /// Written `?field`: a missing value joins as null instead of excluding the event.
    pub optional: bool,
}

/// One compiled step.
#[derive(Clone, Debug)]
pub struct StepSpec {
    /// What the event alone must satisfy.
    pub matcher: EventMatcher,
    /// Conditions on earlier steps (`$N.field`, `lineage($N)`), if any.
    pub cross: Option<Pred>,
    /// Join keys: the query's `by` keys, then the step's own.
    pub keys: Vec<JoinKey>,
    /// `![…]`: the step must *not* happen.
    pub missing: bool,
}

impl StepSpec {
    /// Whether the event satisfies the step's own condition.
    #[inline]
    pub fn matches(&self, ev: &cordon_ingest::Event) -> bool {
        self.matcher.matches(ev)
    }
}

/// A compiled `sequence`.
#[derive(Clone, Debug)]
pub struct SequenceSpec {
    /// The steps, with `runs` expanded.
    pub steps: Vec<StepSpec>,
    /// The `until` step.
    pub until: Option<StepSpec>,
    /// Maximum event-time span from the first to the last step, in nanoseconds.
    pub maxspan: Option<i64>,
}

/// A compiled `sample` (with `maxspan`: a temporal correlation).
#[derive(Clone, Debug)]
pub struct SampleSpec {
    /// The steps, matched in any order.
    pub steps: Vec<StepSpec>,
    /// Maximum event-time span, in nanoseconds.
    pub maxspan: Option<i64>,
}

/// What a threshold measures.
#[derive(Clone, Debug, PartialEq)]
pub enum MeasureSpec {
    /// Matching events.
    Count,
    /// Distinct values of a field.
    Distinct(FieldRef),
}

/// A compiled `threshold`.
#[derive(Clone, Debug)]
pub struct ThresholdSpec {
    /// The events counted and their keys.
    pub step: StepSpec,
    /// Window length in nanoseconds.
    pub window: i64,
    /// What is counted.
    pub measure: MeasureSpec,
    /// Comparison.
    pub op: CmpOp,
    /// Bound.
    pub value: u64,
}

impl ThresholdSpec {
    /// Whether a measured value satisfies the threshold.
    pub fn reached(&self, n: u64) -> bool {
        match self.op {
            CmpOp::Gt => n > self.value,
            CmpOp::Ge => n >= self.value,
            _ => n == self.value,
        }
    }
}

fn nanos(d: Duration) -> i64 {
    d.as_nanos().min(i64::MAX as u128) as i64
}

impl Compiler<'_> {
    /// The 0-based index of `$step` written inside the current step.
    pub(crate) fn step_index(&self, step: usize, span: Span) -> Result<usize, QueryError> {
        match self.step {
            Some(current) if step >= 1 && step <= current => Ok(step - 1),
            Some(current) => Err(QueryError::new(
                span,
                format!(
                    "`${step}` is not an earlier step: step {} can refer to {}",
                    current + 1,
                    if current == 0 {
                        "no earlier step".to_owned()
                    } else {
                        format!("`$1` to `${current}`")
                    }
                ),
            )),
            None => Err(QueryError::new(
                span,
                format!("`${step}` refers to a sequence step: it is only valid inside a sequence"),
            )),
        }
    }

    fn join_keys(&mut self, exprs: &[Expr]) -> Result<Vec<JoinKey>, QueryError> {
        exprs
            .iter()
            .map(|e| match e {
                Expr::Field {
                    name,
                    optional,
                    span,
                    ..
                } => {
                    let written = if *optional {
                        format!("?{name}")
                    } else {
                        name.clone()
                    };
                    Ok(JoinKey {
                        field: self.field_ref(&written, *span)?,
                        optional: *optional,
                    })
                }
                other => Err(QueryError::new(
                    other.span(),
                    "join keys must be fields, as in `by gen_ai.agent.id`",
                )),
            })
            .collect()
    }

    fn step_spec(
        &mut self,
        step: &Step,
        index: Option<usize>,
        shared: &[JoinKey],
    ) -> Result<StepSpec, QueryError> {
        self.step = index;
        let compiled = self.event_query(&step.query);
        self.step = None;
        let EventMatcher { category, pred } = compiled?;
        let (local, cross) = split_cross(pred);
        let mut keys = shared.to_vec();
        keys.extend(self.join_keys(&step.by)?);
        Ok(StepSpec {
            matcher: EventMatcher {
                category,
                pred: local,
            },
            cross,
            keys,
            missing: step.missing,
        })
    }

    pub(crate) fn sequence(&mut self, s: &Sequence) -> Result<SequenceSpec, QueryError> {
        let shared = self.join_keys(&s.by)?;
        let mut steps = Vec::new();
        for st in &s.steps {
            for _ in 0..st.runs.unwrap_or(1) {
                let idx = steps.len();
                steps.push(self.step_spec(st, Some(idx), &shared)?);
            }
        }
        check_key_counts(&steps, &s.steps)?;
        if steps.iter().all(|st| st.missing) {
            return Err(QueryError::new(
                s.steps[0].span,
                "a sequence needs at least one step that is not `![…]`",
            ));
        }
        let last = s.steps.last().map(|st| (st.missing, st.span));
        if let Some((true, span)) = last {
            if s.maxspan.is_none() {
                return Err(QueryError::new(
                    span,
                    "a trailing `![…]` step needs `with maxspan=…`: the sequence matches when the span closes without that event",
                ));
            }
        }
        let until = match &s.until {
            Some(u) if u.missing => {
                return Err(QueryError::new(u.span, "`until` cannot be a `![…]` step"))
            }
            Some(u) => {
                let spec = self.step_spec(u, None, &shared)?;
                if spec.keys.len() != steps[0].keys.len() {
                    return Err(QueryError::new(
                        u.span,
                        "`until` must have as many join keys as the steps",
                    ));
                }
                Some(spec)
            }
            None => None,
        };
        Ok(SequenceSpec {
            steps,
            until,
            maxspan: s.maxspan.map(nanos),
        })
    }

    pub(crate) fn sample(&mut self, s: &Sample) -> Result<SampleSpec, QueryError> {
        let shared = self.join_keys(&s.by)?;
        let mut steps = Vec::new();
        for st in &s.steps {
            if st.missing {
                return Err(QueryError::new(st.span, "`sample` steps cannot be `![…]`"));
            }
            steps.push(self.step_spec(st, None, &shared)?);
        }
        check_key_counts(&steps, &s.steps)?;
        Ok(SampleSpec {
            steps,
            maxspan: s.maxspan.map(nanos),
        })
    }

    pub(crate) fn threshold(&mut self, t: &Threshold) -> Result<ThresholdSpec, QueryError> {
        let shared = self.join_keys(&t.by)?;
        let step = self.step_spec(&t.step, None, &shared)?;
        let measure = match &t.measure {
            Measure::Count => MeasureSpec::Count,
            Measure::Distinct(Expr::Field {
                name,
                optional,
                span,
                ..
            }) => {
                let written = if *optional {
                    format!("?{name}")
                } else {
                    name.clone()
                };
                MeasureSpec::Distinct(self.field_ref(&written, *span)?)
            }
            Measure::Distinct(other) => {
                return Err(QueryError::new(
                    other.span(),
                    "`distinct` counts the values of a field",
                ))
            }
        };
        let op = match t.op {
            BinOp::Gt => CmpOp::Gt,
            BinOp::Ge => CmpOp::Ge,
            _ => CmpOp::Eq,
        };
        Ok(ThresholdSpec {
            step,
            window: nanos(t.window),
            measure,
            op,
            value: t.value,
        })
    }
}

fn check_key_counts(steps: &[StepSpec], written: &[Step]) -> Result<(), QueryError> {
    let n = steps.first().map(|s| s.keys.len()).unwrap_or(0);
    for (spec, w) in steps.iter().zip(written.iter().cycle()) {
        if spec.keys.len() != n {
            return Err(QueryError::new(
                w.span,
                format!(
                    "every step must have the same number of join keys ({n} for the first step, {} here)",
                    spec.keys.len()
                ),
            ));
        }
    }
    Ok(())
}

/// Splits a condition into the part that reads only the event and the part that refers to
/// earlier steps.
fn split_cross(pred: Pred) -> (Pred, Option<Pred>) {
    if !pred.refers_to_steps() {
        return (pred, None);
    }
    match pred {
        Pred::And(parts) => {
            let (cross, local): (Vec<Pred>, Vec<Pred>) = parts
                .into_vec()
                .into_iter()
                .partition(Pred::refers_to_steps);
            let local = if local.is_empty() {
                Pred::Const(Some(true))
            } else {
                Pred::And(local.into())
            };
            (local, Some(Pred::And(cross.into())))
        }
        other => (Pred::Const(Some(true)), Some(other)),
    }
}

/// The category name of a step, for messages.
pub fn category_name(c: &Option<Category>) -> &str {
    c.as_ref().map(Category::as_str).unwrap_or("any")
}
