//! The breaker's unit tests, in a file of their own so that `breaker.rs` reads as the
//! mechanism alone. Time is tokio's, paused: cooldowns pass and calls get slow by `advance`,
//! never by sleeping.

use std::time::Duration;

use super::*;

const COOLDOWN: Duration = Duration::from_secs(5);
const SLOW: Duration = Duration::from_millis(100);

/// Opens at half the window failed, judging on at least `window / 2` calls, with one probe
/// half-open; slow calls open it only when every call in the window was slow.
fn settings(window: usize) -> BreakerSettings {
    BreakerSettings {
        failure_rate: 0.5,
        slow_call_rate: 1.0,
        slow_call_duration: SLOW,
        window,
        min_calls: (window / 2).max(1),
        cooldown: COOLDOWN,
        half_open_calls: 1,
    }
}

fn breaker(window: usize) -> Breaker {
    Breaker::new("test", settings(window))
}

/// One permitted call, settled at once.
fn call(breaker: &Breaker, failed: bool) {
    let permit = breaker
        .try_acquire()
        .expect("the breaker lets the call through");
    if failed {
        permit.failure();
    } else {
        permit.success();
    }
}

/// One permitted call that succeeds after `took`.
async fn call_taking(breaker: &Breaker, took: Duration) {
    let permit = breaker
        .try_acquire()
        .expect("the breaker lets the call through");
    tokio::time::advance(took).await;
    permit.success();
}

/// A breaker of window 4 (judging on 2 calls or more), opened by two failures.
fn opened_with(settings: BreakerSettings) -> Breaker {
    let breaker = Breaker::new("test", settings);
    for _ in 0..settings.min_calls {
        call(&breaker, true);
    }
    assert_eq!(breaker.state(), BreakerState::Open);
    breaker
}

fn opened() -> Breaker {
    opened_with(settings(4))
}

#[tokio::test(start_paused = true)]
async fn stays_closed_while_the_failed_share_is_under_the_rate() {
    let breaker = breaker(10);

    for i in 0..30 {
        call(&breaker, i % 3 == 0);
    }

    assert_eq!(breaker.state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn opens_at_the_rate_only_once_the_window_holds_the_minimum_of_calls() {
    let breaker = breaker(10);

    // Four failures out of four: over the rate, but under the five calls it judges on.
    for _ in 0..4 {
        call(&breaker, true);
    }
    assert_eq!(breaker.state(), BreakerState::Closed);
    call(&breaker, true);

    assert_eq!(breaker.state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn the_minimum_of_calls_is_a_setting_of_its_own() {
    let breaker = Breaker::new(
        "test",
        BreakerSettings {
            min_calls: 8,
            ..settings(10)
        },
    );

    for _ in 0..7 {
        call(&breaker, true);
    }
    assert_eq!(breaker.state(), BreakerState::Closed, "7 failures of 7");
    call(&breaker, true);

    assert_eq!(breaker.state(), BreakerState::Open, "8 failures of 8");
}

#[tokio::test(start_paused = true)]
async fn a_minimum_of_one_judges_from_the_first_call() {
    let breaker = Breaker::new(
        "test",
        BreakerSettings {
            min_calls: 1,
            ..settings(10)
        },
    );

    call(&breaker, true);

    assert_eq!(breaker.state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn opens_when_the_failed_share_reaches_the_rate_exactly() {
    let breaker = breaker(4);
    call(&breaker, false);
    call(&breaker, false);
    call(&breaker, true);
    assert_eq!(breaker.state(), BreakerState::Closed, "1 of 3 failed");

    call(&breaker, true);

    assert_eq!(breaker.state(), BreakerState::Open, "2 of 4 failed");
}

#[tokio::test(start_paused = true)]
async fn slow_successes_open_the_breaker_at_the_slow_call_rate() {
    let breaker = Breaker::new(
        "test",
        BreakerSettings {
            slow_call_rate: 0.5,
            ..settings(4)
        },
    );
    call_taking(&breaker, SLOW / 2).await;
    call_taking(&breaker, SLOW / 2).await;
    call_taking(&breaker, SLOW * 2).await;
    assert_eq!(breaker.state(), BreakerState::Closed, "1 of 3 slow");

    call_taking(&breaker, SLOW * 2).await;

    assert_eq!(
        breaker.state(),
        BreakerState::Open,
        "2 of 4 slow, though every call succeeded"
    );
}

#[tokio::test(start_paused = true)]
async fn a_call_is_slow_only_past_the_slow_call_duration_timed_from_its_permit() {
    let breaker = Breaker::new(
        "test",
        BreakerSettings {
            min_calls: 1,
            ..settings(4)
        },
    );

    // Exactly the duration is not slow ("slower than"); the window stays all fast.
    call_taking(&breaker, SLOW).await;
    assert_eq!(breaker.state(), BreakerState::Closed);
    // Time before the permit does not count.
    tokio::time::advance(SLOW * 10).await;
    call_taking(&breaker, Duration::ZERO).await;
    assert_eq!(breaker.state(), BreakerState::Closed);

    // One slow call of three is not every call: the rate of 1 needs all of them slow.
    call_taking(&breaker, SLOW + Duration::from_millis(1)).await;
    assert_eq!(breaker.state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_window_of_nothing_but_slow_calls_opens_a_breaker_with_a_slow_rate_of_one() {
    let breaker = breaker(4);

    for _ in 0..2 {
        call_taking(&breaker, SLOW * 3).await;
    }

    assert_eq!(breaker.state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn a_slow_failure_counts_as_failed_and_as_slow() {
    // Neither share alone reaches its rate: the failures are 1 of 4 (rate 0.5), the slow
    // calls 2 of 4 (rate 0.5) only if the slow failure counts as slow too.
    let breaker = Breaker::new(
        "test",
        BreakerSettings {
            slow_call_rate: 0.5,
            min_calls: 4,
            ..settings(4)
        },
    );
    call(&breaker, false);
    call(&breaker, false);
    call_taking(&breaker, SLOW * 2).await;
    let permit = breaker.try_acquire().expect("closed");
    tokio::time::advance(SLOW * 2).await;

    permit.failure();

    assert_eq!(breaker.state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_refuses_every_call_until_the_cooldown_has_passed() {
    let breaker = opened();

    assert!(breaker.try_acquire().is_none());
    tokio::time::advance(COOLDOWN - Duration::from_millis(1)).await;
    assert!(breaker.try_acquire().is_none());
    assert_eq!(breaker.state(), BreakerState::Open);

    tokio::time::advance(Duration::from_millis(1)).await;

    assert!(breaker.try_acquire().is_some());
}

#[tokio::test(start_paused = true)]
async fn after_the_cooldown_exactly_the_configured_number_of_probes_go_through() {
    let breaker = opened_with(BreakerSettings {
        half_open_calls: 3,
        ..settings(4)
    });
    tokio::time::advance(COOLDOWN).await;

    let probes: Vec<Permit> = (0..3).filter_map(|_| breaker.try_acquire()).collect();
    let fourth = breaker.clone().try_acquire();

    assert_eq!(probes.len(), 3);
    assert!(fourth.is_none(), "every probe is out");
    assert_eq!(breaker.state(), BreakerState::HalfOpen);
    // A settled probe does not free its place: the verdict waits for the other two.
    let mut probes = probes.into_iter();
    probes.next().unwrap().success();
    assert!(breaker.try_acquire().is_none());
    assert_eq!(breaker.state(), BreakerState::HalfOpen);
    probes.next().unwrap().success();
    assert_eq!(breaker.state(), BreakerState::HalfOpen);
    probes.next().unwrap().success();
    assert_eq!(breaker.state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn probes_under_both_thresholds_close_the_breaker_and_over_either_reopen_it() {
    let half_open = BreakerSettings {
        half_open_calls: 3,
        slow_call_rate: 0.5,
        ..settings(4)
    };
    // (outcome of each probe: failed, took) → the state after the third.
    let cases = [
        ([(false, 0), (false, 0), (true, 0)], BreakerState::Closed),
        ([(false, 0), (true, 0), (true, 0)], BreakerState::Open),
        ([(false, 0), (false, 0), (false, 2)], BreakerState::Closed),
        ([(false, 2), (false, 0), (false, 2)], BreakerState::Open),
    ];
    for (probes, expected) in cases {
        let breaker = opened_with(half_open);
        tokio::time::advance(COOLDOWN).await;
        let permits: Vec<Permit> = (0..3).map(|_| breaker.try_acquire().unwrap()).collect();
        for (permit, (failed, slow_factor)) in permits.into_iter().zip(probes) {
            // All three were handed out at once; the clock moves `slow_factor` × SLOW before
            // each is settled, so a probe is slow once the total passes SLOW.
            tokio::time::advance(SLOW * slow_factor).await;
            if failed {
                permit.failure();
            } else {
                permit.success();
            }
        }
        assert_eq!(breaker.state(), expected, "{probes:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_successful_probe_closes_the_breaker_with_an_empty_window() {
    let breaker = opened();
    tokio::time::advance(COOLDOWN).await;

    breaker.try_acquire().expect("the probe").success();

    assert_eq!(breaker.state(), BreakerState::Closed);
    // The two failures that opened it are gone: one new failure is under the two calls it
    // judges on.
    call(&breaker, true);
    assert_eq!(breaker.state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_failed_probe_opens_the_breaker_for_a_fresh_cooldown() {
    let breaker = opened();
    tokio::time::advance(COOLDOWN).await;
    let probe = breaker.try_acquire().expect("the probe");
    // A slow probe: the next cooldown counts from its failure, not from the first opening.
    tokio::time::advance(Duration::from_secs(3)).await;

    probe.failure();

    assert_eq!(breaker.state(), BreakerState::Open);
    tokio::time::advance(COOLDOWN - Duration::from_millis(1)).await;
    assert!(breaker.try_acquire().is_none());
    tokio::time::advance(Duration::from_millis(1)).await;
    assert!(breaker.try_acquire().is_some());
}

#[tokio::test(start_paused = true)]
async fn a_probe_dropped_unsettled_frees_its_place_for_the_next_caller() {
    let breaker = opened();
    tokio::time::advance(COOLDOWN).await;

    drop(breaker.try_acquire().expect("the probe"));

    assert_eq!(breaker.state(), BreakerState::HalfOpen);
    breaker.try_acquire().expect("a new probe").success();
    assert_eq!(breaker.state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn successes_push_old_failures_out_of_the_window() {
    let breaker = breaker(4);
    for failed in [false, false, false, true] {
        call(&breaker, failed);
    }
    // Four successes: the window no longer holds the failure.
    for _ in 0..4 {
        call(&breaker, false);
    }

    call(&breaker, true);

    // 1 of 4 failed; had the old failure stayed, 2 of 4 would have opened it.
    assert_eq!(breaker.state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_call_permitted_before_the_breaker_opened_does_not_count_after_it_closes() {
    let breaker = breaker(4);
    let slow = breaker.try_acquire().expect("closed");
    call(&breaker, true);
    call(&breaker, true);
    tokio::time::advance(COOLDOWN).await;
    breaker.try_acquire().expect("the probe").success();

    slow.failure();
    call(&breaker, true);

    // Had the slow failure counted, 2 of 2 would have opened it again.
    assert_eq!(breaker.state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_call_permitted_while_closed_and_settled_while_half_open_is_not_a_probe() {
    let breaker = Breaker::new(
        "test",
        BreakerSettings {
            half_open_calls: 2,
            ..settings(4)
        },
    );
    let late = breaker.try_acquire().expect("closed");
    call(&breaker, true);
    call(&breaker, true);
    tokio::time::advance(COOLDOWN).await;
    let first = breaker.try_acquire().expect("a probe");

    late.failure();

    assert_eq!(breaker.state(), BreakerState::HalfOpen, "not judged yet");
    let second = breaker
        .try_acquire()
        .expect("the second probe's place is free");
    first.success();
    second.success();
    assert_eq!(breaker.state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn with_its_switch_off_a_breaker_lets_every_call_through_and_never_opens() {
    let switch = BreakerSwitch::default();
    let breaker = Breaker::new("test", settings(4)).with_switch(&switch);
    switch.set(false);

    for _ in 0..20 {
        call(&breaker, true);
    }

    assert_eq!(breaker.state(), BreakerState::Closed);
    switch.set(true);
    call(&breaker, true);
    assert_eq!(
        breaker.state(),
        BreakerState::Closed,
        "calls made while off were not recorded: 1 failure is under the minimum"
    );
    call(&breaker, true);
    assert_eq!(breaker.state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn switching_off_closes_an_open_breaker_at_once() {
    let switch = BreakerSwitch::default();
    let breaker = Breaker::new("test", settings(4)).with_switch(&switch);
    call(&breaker, true);
    call(&breaker, true);
    assert_eq!(breaker.state(), BreakerState::Open);

    switch.set(false);

    assert_eq!(breaker.state(), BreakerState::Closed);
    assert!(breaker.try_acquire().is_some(), "no cooldown to wait out");
    // A breaker built without a switch is not affected.
    let independent = opened();
    assert!(independent.try_acquire().is_none());
}

#[test]
fn the_states_read_as_their_metric_and_log_names() {
    assert_eq!(BreakerState::Closed.as_str(), "closed");
    assert_eq!(BreakerState::Open.as_str(), "open");
    assert_eq!(BreakerState::HalfOpen.as_str(), "half_open");
}

#[test]
fn a_breaker_its_permits_and_its_switch_can_be_shared_across_tasks() {
    fn shareable<T: Send + Sync + 'static>() {}
    shareable::<Breaker>();
    shareable::<Permit>();
    shareable::<BreakerSwitch>();
}

#[test]
#[should_panic(expected = "min_calls must be in 1..=window")]
fn settings_that_config_would_refuse_are_a_programming_error() {
    let _ = Breaker::new(
        "test",
        BreakerSettings {
            min_calls: 5,
            ..settings(4)
        },
    );
}
