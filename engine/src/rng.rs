//! The one place that touches libtorch's process-global random generator
//! (sampled generation, AVP-ENG-8, and random benchmark weights).
//!
//! Why global: tch 0.24 has no `Generator` handle (its `multinomial`,
//! `randn` and `exponential_` wrappers take none), and the SDK's recipe is
//! `torch.manual_seed(seed)` followed by draws from the default generator.
//! Reproducing that stream with a generator of our own would mean
//! re-implementing libtorch's mt19937 state, the CPU `exponential_` kernel
//! that `multinomial` draws through (MKL-backed in the wheel we link), and
//! CUDA's Philox offsets, and tracking them across libtorch versions. So the
//! generator stays libtorch's, but nothing draws from it without a
//! [`SeededRng`]: making one seeds the generator and holds a process-wide
//! lock until it is dropped, so two seeded runs in one process never
//! interleave their draws, and every random op takes it explicitly.

use std::cell::Cell;
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::error::{EngineError, Result};

/// Serialises every use of the global generator in this process.
static GLOBAL_GENERATOR: Mutex<()> = Mutex::new(());

thread_local! {
    /// This thread holds a [`SeededRng`]: a second would wait on itself.
    static HELD_HERE: Cell<bool> = const { Cell::new(false) };
}

/// Exclusive use of libtorch's default generator, seeded as
/// `torch.manual_seed(seed)` seeds it (every device).
#[derive(Debug)]
pub struct SeededRng {
    _held: MutexGuard<'static, ()>,
}

impl SeededRng {
    /// Waits for the generator (held by another thread), then seeds it.
    /// Asking again on a thread that already holds one is an error, not a
    /// deadlock: take one per run and pass it down.
    pub fn seeded(seed: i64) -> Result<Self> {
        if HELD_HERE.with(Cell::get) {
            return Err(EngineError::InvalidArgument(
                "this thread already holds the seeded generator (one SeededRng per run)".into(),
            ));
        }
        // A panic elsewhere while holding the lock leaves no broken state:
        // the next holder reseeds anyway.
        let held = GLOBAL_GENERATOR
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        HELD_HERE.with(|here| here.set(true));
        tch::manual_seed(seed);
        Ok(Self { _held: held })
    }

    /// The SDK passes seeds as Python ints; libtorch takes the same 64 bits
    /// as `i64` (what `torch.manual_seed` does with a value above `i64::MAX`).
    pub fn seeded_u64(seed: u64) -> Result<Self> {
        Self::seeded(i64::from_ne_bytes(seed.to_ne_bytes()))
    }
}

impl Drop for SeededRng {
    fn drop(&mut self) {
        // Runs before the guard field is dropped, on the holding thread
        // (a MutexGuard is not Send).
        HELD_HERE.with(|here| here.set(false));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind, Tensor};

    fn draw(_rng: &mut SeededRng) -> Vec<f32> {
        let t = Tensor::f_randn([4], (Kind::Float, Device::Cpu)).expect("randn");
        Vec::<f32>::try_from(&t).expect("to vec")
    }

    fn seeded(seed: i64) -> SeededRng {
        SeededRng::seeded(seed).expect("free on this thread")
    }

    #[test]
    fn a_seed_replays_its_stream_and_another_seed_does_not() {
        let first = draw(&mut seeded(7));
        let again = draw(&mut seeded(7));
        let other = draw(&mut seeded(8));
        assert_eq!(first, again);
        assert_ne!(first, other);
        let high = draw(&mut SeededRng::seeded_u64(u64::MAX).expect("free"));
        assert_eq!(high, draw(&mut seeded(-1)));
    }

    #[test]
    fn a_second_generator_on_one_thread_is_an_error_not_a_deadlock() {
        let held = seeded(1);
        assert!(matches!(
            SeededRng::seeded(2),
            Err(EngineError::InvalidArgument(_))
        ));
        drop(held);
        assert!(SeededRng::seeded(2).is_ok(), "free again once dropped");
    }
}
