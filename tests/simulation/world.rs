//! The simulated world of one seed: a seeded random stream, a clock that only
//! moves when every actor waits (tokio's paused time), and actors whose every
//! call to the outside (object store, table) passes a gate that delays it,
//! fails it, loses its response, pauses the actor or crashes it, as the seed
//! says. The delays are the scheduler: they decide which actor's call lands
//! first.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use tidemark::environment::Environment;
use tokio::time::Instant;
use uuid::Uuid;

/// SplitMix64: small, fast, and the same stream for the same seed everywhere.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    /// One of `items`.
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

/// How often calls fail, per seed.
#[derive(Debug, Clone, Copy)]
pub struct FaultRates {
    /// A call fails without being applied (a 503 after the client's retries).
    pub fail_before: f64,
    /// A call is applied but its response is lost (a time-out).
    pub lose_response: f64,
    /// Each call waits up to this long first: the interleaving.
    pub max_delay_ms: u64,
}

/// One seed's world, shared by its actors.
#[derive(Debug)]
pub struct World {
    rng: Mutex<Rng>,
    pub faults: FaultRates,
    trace: Mutex<Vec<String>>,
    start: Instant,
    base: DateTime<Utc>,
    ids: AtomicU64,
}

impl World {
    /// Must be called inside the seed's (paused) runtime.
    pub fn new(rng: Rng, faults: FaultRates) -> Arc<Self> {
        Arc::new(World {
            rng: Mutex::new(rng),
            faults,
            trace: Mutex::new(Vec::new()),
            start: Instant::now(),
            base: Utc
                .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
                .single()
                .expect("a valid date"),
            ids: AtomicU64::new(1),
        })
    }

    pub fn with_rng<T>(&self, f: impl FnOnce(&mut Rng) -> T) -> T {
        f(&mut self.rng.lock().expect("rng"))
    }

    /// Milliseconds of simulated time since the seed began.
    pub fn elapsed_ms(&self) -> u128 {
        (Instant::now() - self.start).as_millis()
    }

    pub fn log(&self, line: String) {
        let line = format!("{:>8} ms  {line}", self.elapsed_ms());
        self.trace.lock().expect("trace").push(line);
    }

    pub fn trace(&self) -> Vec<String> {
        self.trace.lock().expect("trace").clone()
    }
}

/// The store's clock and ids: simulated time, ids ordered by (time, counter).
#[derive(Debug)]
pub struct SimEnvironment(pub Arc<World>);

impl Environment for SimEnvironment {
    fn now(&self) -> DateTime<Utc> {
        let world = &self.0;
        world.base
            + chrono::Duration::from_std(Instant::now() - world.start).expect("a short simulation")
    }

    fn new_id(&self) -> Uuid {
        let millis = self.now().timestamp_millis() as u64;
        let counter = self.0.ids.fetch_add(1, Ordering::Relaxed);
        let mut bytes = [0u8; 10];
        bytes[3..].copy_from_slice(&counter.to_be_bytes()[1..]);
        uuid::Builder::from_unix_timestamp_millis(millis, &bytes).into_uuid()
    }
}

/// What happens to one actor, drawn from the seed.
#[derive(Debug, Clone, Copy, Default)]
pub struct ActorPlan {
    /// Dies at this call (counted from 1), before it applies, or after it
    /// applied with `crash_after_apply`.
    pub crash_at: Option<u64>,
    pub crash_after_apply: bool,
    /// Freezes at this call for this long (a stop-the-world pause or a
    /// suspended VM): every call of the actor waits until it wakes.
    pub pause_at: Option<(u64, Duration)>,
    /// Freezes at the `n`th call of the operation named (as the gates name
    /// them: `load table`, say) for this long.
    pub pause_on: Option<(&'static str, u64, Duration)>,
    /// Faults and delays apply to this actor (off for the final clean run).
    pub faulty: bool,
}

/// One process of the simulation: its calls are counted, delayed, failed,
/// paused and crashed as its plan and the world's fault rates say.
#[derive(Debug)]
pub struct Actor {
    pub name: String,
    world: Arc<World>,
    plan: ActorPlan,
    calls: AtomicU64,
    /// Calls of the operation of `plan.pause_on`.
    pause_on_calls: AtomicU64,
    paused_until: Mutex<Option<Instant>>,
    dead: AtomicBool,
}

/// How a call that went through the gate must end.
#[derive(Debug)]
pub struct Exit {
    call: u64,
    lose_response: bool,
    crash_after: bool,
}

impl Actor {
    pub fn new(name: impl Into<String>, world: Arc<World>, plan: ActorPlan) -> Arc<Self> {
        Arc::new(Actor {
            name: name.into(),
            world,
            plan,
            calls: AtomicU64::new(0),
            pause_on_calls: AtomicU64::new(0),
            paused_until: Mutex::new(None),
            dead: AtomicBool::new(false),
        })
    }

    pub fn world(&self) -> &Arc<World> {
        &self.world
    }

    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }

    /// Runs `call` through the gate: it may be delayed, fail before it is
    /// applied, be applied and then fail, or kill the actor. `error` turns
    /// the gate's message into the caller's error type.
    pub async fn call<T, E>(
        &self,
        op: &str,
        what: &str,
        call: impl std::future::Future<Output = Result<T, E>>,
        error: impl Fn(String) -> E,
    ) -> Result<T, E> {
        let exit = self.enter(op, what).await.map_err(&error)?;
        let result = call.await;
        self.exit(exit, op, what, result.is_ok()).map_err(&error)?;
        result
    }

    /// Before a call: `Err` if it fails without being applied.
    async fn enter(&self, op: &str, what: &str) -> Result<Exit, String> {
        if self.is_dead() {
            return Err(format!("{} is dead", self.name));
        }
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if let Some((at, pause)) = self.plan.pause_at {
            if at == call {
                self.world.log(format!(
                    "{} #{call} freezes for {} ms",
                    self.name,
                    pause.as_millis()
                ));
                *self.paused_until.lock().expect("pause") = Some(Instant::now() + pause);
            }
        }
        if let Some((name, at, pause)) = self.plan.pause_on {
            if name == op && self.pause_on_calls.fetch_add(1, Ordering::SeqCst) + 1 == at {
                self.world.log(format!(
                    "{} #{call} ({op} {at}) freezes for {} ms",
                    self.name,
                    pause.as_millis()
                ));
                *self.paused_until.lock().expect("pause") = Some(Instant::now() + pause);
            }
        }
        let until = *self.paused_until.lock().expect("pause");
        if let Some(until) = until {
            tokio::time::sleep_until(until).await;
        }
        if self.plan.faulty {
            // At least a millisecond: a task that is merely ready (rather
            // than waiting on the paused clock) would race the map workers'
            // blocking threads in real time, and the replay would differ.
            let delay = 1 + self
                .world
                .with_rng(|rng| rng.below(self.world.faults.max_delay_ms));
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if self.is_dead() {
            return Err(format!("{} is dead", self.name));
        }
        let mut exit = Exit {
            call,
            lose_response: false,
            crash_after: false,
        };
        if self.plan.crash_at == Some(call) {
            if self.plan.crash_after_apply {
                exit.crash_after = true;
            } else {
                self.dead.store(true, Ordering::SeqCst);
                self.world
                    .log(format!("{} #{call} {op} {what}: CRASH before", self.name));
                return Err(format!("{} crashed", self.name));
            }
        }
        if self.plan.faulty {
            let faults = self.world.faults;
            let (fail, lose) = self.world.with_rng(|rng| {
                (
                    rng.chance(faults.fail_before),
                    rng.chance(faults.lose_response),
                )
            });
            if fail {
                self.world
                    .log(format!("{} #{call} {op} {what}: 503", self.name));
                return Err(format!("injected 503 on {op} {what}"));
            }
            exit.lose_response = lose;
        }
        Ok(exit)
    }

    /// After the call was applied (successfully or not): `Err` if the caller
    /// must not see its result.
    fn exit(&self, exit: Exit, op: &str, what: &str, ok: bool) -> Result<(), String> {
        let outcome = if exit.crash_after {
            self.dead.store(true, Ordering::SeqCst);
            "CRASH after applying"
        } else if exit.lose_response {
            "response lost"
        } else if ok {
            "ok"
        } else {
            "error"
        };
        self.world.log(format!(
            "{} #{} {op} {what}: {outcome}",
            self.name, exit.call
        ));
        if exit.crash_after {
            return Err(format!("{} crashed", self.name));
        }
        if exit.lose_response {
            return Err(format!("injected time-out on {op} {what} (applied)"));
        }
        Ok(())
    }
}
