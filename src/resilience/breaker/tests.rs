//! The breaker's unit tests, in a file of their own so that `breaker.rs` reads as the
//! mechanism alone. Time is tokio's, paused: cooldowns pass by `advance`, never by sleeping.

use super::*;

const COOLDOWN: Duration = Duration::from_secs(5);

/// Opens at half the window failed, judging on at least `window / 2` calls.
fn breaker(window: usize) -> Breaker {
    Breaker::new(
        "test",
        BreakerSettings {
            failure_rate: 0.5,
            window,
            cooldown: COOLDOWN,
        },
    )
}

/// One permitted call, settled.
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

/// A breaker of window 4 (judging on 2 calls or more), opened by two failures.
fn opened() -> Breaker {
    let breaker = breaker(4);
    call(&breaker, true);
    call(&breaker, true);
    assert_eq!(breaker.state(), BreakerState::Open);
    breaker
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
async fn opens_at_the_rate_only_once_the_window_holds_enough_calls() {
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
async fn after_the_cooldown_exactly_one_trial_call_goes_through() {
    let breaker = opened();
    tokio::time::advance(COOLDOWN).await;

    let trial = breaker.try_acquire();
    let second = breaker.clone().try_acquire();

    assert!(trial.is_some());
    assert!(second.is_none(), "the trial is out");
    assert_eq!(breaker.state(), BreakerState::HalfOpen);
}

#[tokio::test(start_paused = true)]
async fn a_successful_trial_closes_the_breaker_with_an_empty_window() {
    let breaker = opened();
    tokio::time::advance(COOLDOWN).await;

    breaker.try_acquire().expect("the trial").success();

    assert_eq!(breaker.state(), BreakerState::Closed);
    // The two failures that opened it are gone: one new failure is under the two calls it
    // judges on.
    call(&breaker, true);
    assert_eq!(breaker.state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_failed_trial_opens_the_breaker_for_a_fresh_cooldown() {
    let breaker = opened();
    tokio::time::advance(COOLDOWN).await;
    let trial = breaker.try_acquire().expect("the trial");
    // A slow trial: the next cooldown counts from its failure, not from the first opening.
    tokio::time::advance(Duration::from_secs(3)).await;

    trial.failure();

    assert_eq!(breaker.state(), BreakerState::Open);
    tokio::time::advance(COOLDOWN - Duration::from_millis(1)).await;
    assert!(breaker.try_acquire().is_none());
    tokio::time::advance(Duration::from_millis(1)).await;
    assert!(breaker.try_acquire().is_some());
}

#[tokio::test(start_paused = true)]
async fn a_trial_permit_dropped_unsettled_frees_the_trial_for_the_next_caller() {
    let breaker = opened();
    tokio::time::advance(COOLDOWN).await;

    drop(breaker.try_acquire().expect("the trial"));

    assert_eq!(breaker.state(), BreakerState::HalfOpen);
    breaker.try_acquire().expect("a new trial").success();
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
    breaker.try_acquire().expect("the trial").success();

    slow.failure();
    call(&breaker, true);

    // Had the slow failure counted, 2 of 2 would have opened it again.
    assert_eq!(breaker.state(), BreakerState::Closed);
}

#[test]
fn the_states_read_as_their_metric_and_log_names() {
    assert_eq!(BreakerState::Closed.as_str(), "closed");
    assert_eq!(BreakerState::Open.as_str(), "open");
    assert_eq!(BreakerState::HalfOpen.as_str(), "half_open");
}

#[test]
fn a_breaker_and_its_permits_can_be_shared_across_tasks() {
    fn shareable<T: Send + Sync + 'static>() {}
    shareable::<Breaker>();
    shareable::<Permit>();
}
