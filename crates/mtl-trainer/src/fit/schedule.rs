//! The schedule: after each step, whether to evaluate, write a checkpoint, or stop at this
//! invocation's step limit.

use crate::config::TrainSettings;

/// What the schedule asks for after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Due {
    /// Evaluate on the validation set (every N steps and at the last epoch's end, or at
    /// every epoch's end).
    pub eval: bool,
    /// Write a checkpoint (every N steps and at every epoch's end, or at every epoch's end).
    pub checkpoint: bool,
    /// This invocation's step limit is reached.
    pub limit: bool,
}

/// The schedule after global step `step` (1-based), `epoch` being the epoch count once the
/// step's epoch end (if `at_epoch_end`) is counted.
pub(crate) fn due(settings: &TrainSettings, step: usize, at_epoch_end: bool, epoch: usize) -> Due {
    Due {
        eval: match settings.eval_every_steps {
            Some(n) => step.is_multiple_of(n) || (at_epoch_end && epoch == settings.epochs),
            None => at_epoch_end,
        },
        checkpoint: match settings.checkpoint_every_steps {
            Some(n) => step.is_multiple_of(n) || at_epoch_end,
            None => at_epoch_end,
        },
        limit: settings.max_steps.is_some_and(|m| step >= m),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_evaluates_checkpoints_and_stops_when_asked() {
        // 2 epochs of 10 steps; evaluate every 5, checkpoint every 4, stop at 7
        let s = TrainSettings {
            epochs: 2,
            eval_every_steps: Some(5),
            checkpoint_every_steps: Some(4),
            max_steps: Some(7),
            ..TrainSettings::default()
        };
        let at = |step: usize| {
            let end = step.is_multiple_of(10);
            due(&s, step, end, step / 10)
        };
        let evals: Vec<usize> = (1..=20).filter(|&k| at(k).eval).collect();
        assert_eq!(evals, [5, 10, 15, 20]);
        let checkpoints: Vec<usize> = (1..=20).filter(|&k| at(k).checkpoint).collect();
        assert_eq!(checkpoints, [4, 8, 10, 12, 16, 20]);
        assert!(!at(6).limit && at(7).limit && at(8).limit);
        // without step settings: both at every epoch's end, no limit
        let plain = TrainSettings {
            epochs: 2,
            ..TrainSettings::default()
        };
        let ends: Vec<usize> = (1..=20)
            .filter(|&k| {
                let d = due(&plain, k, k.is_multiple_of(10), k / 10);
                assert_eq!(d.eval, d.checkpoint);
                assert!(!d.limit);
                d.eval
            })
            .collect();
        assert_eq!(ends, [10, 20]);
        // evaluating every 3 steps still evaluates at the last epoch's end, not the first's
        let three = TrainSettings {
            epochs: 2,
            eval_every_steps: Some(3),
            ..TrainSettings::default()
        };
        assert!(!due(&three, 10, true, 1).eval);
        assert!(due(&three, 20, true, 2).eval);
    }
}
