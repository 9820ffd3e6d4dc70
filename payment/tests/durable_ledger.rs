//! The payment simulator's ledger on real databases (Postgres from testkit, SQLite in a
//! temporary file): it survives the simulator (a restart of the payment process), and several
//! simulators on one database (several payment processes) take the money for a key once.

use std::sync::Arc;

use domain::{Currency, Money};
use payment::gateway::{
    ChargeReceipt, ChargeRequest, ChargeStatus, GatewayError, PaymentGateway, RefundRequest,
};
use payment::simulator::{
    ChargeState, PaymentSimulator, SimulatorConfig, TOKEN_OK, TOKEN_UNKNOWN, ledger_charge,
    ledger_totals,
};

macro_rules! on_both_backends {
    ($($test:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let database = testkit::postgres();
                    super::$test(&database.url).await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let dir = tempfile::tempdir().unwrap();
                    let url = format!("sqlite://{}", dir.path().join("zq.db").display());
                    super::$test(&url).await;
                }
            )*
        }
    };
}

on_both_backends!(
    a_charge_and_its_refund_survive_a_restart,
    two_simulators_charging_one_key_at_once_take_the_money_once,
);

fn eur(amount_minor: i64) -> Money {
    Money::new(amount_minor, "EUR".parse::<Currency>().unwrap())
}

fn charge_request(key: &str, payment_method: &str) -> ChargeRequest {
    ChargeRequest {
        idempotency_key: key.to_string(),
        amount: eur(4_500),
        payment_method: Some(payment_method.to_string()),
        description: "1 seat".to_string(),
    }
}

fn refund_request(receipt: &ChargeReceipt) -> RefundRequest {
    RefundRequest {
        idempotency_key: receipt.charge_id.clone(),
        charge_id: receipt.charge_id.clone(),
        amount: receipt.amount,
    }
}

/// A simulator on `url`, as a payment process opens it.
async fn open(url: &str) -> PaymentSimulator {
    PaymentSimulator::open(SimulatorConfig::default(), url)
        .await
        .unwrap_or_else(|error| panic!("opening the ledger at {url}: {error}"))
}

async fn a_charge_and_its_refund_survive_a_restart(url: &str) {
    let before = open(url).await;
    let paid = before
        .charge(&charge_request("paid", TOKEN_OK))
        .await
        .unwrap();
    let unknown = before
        .charge(&charge_request("unknown", TOKEN_UNKNOWN))
        .await;
    assert!(
        matches!(unknown, Err(GatewayError::UnknownOutcome { .. })),
        "{unknown:?}"
    );
    let flaky = charge_request("flaky", "sim_flaky_2");
    assert!(matches!(
        before.charge(&flaky).await,
        Err(GatewayError::Transient { .. })
    ));
    before.close().await;
    drop(before);

    // The payment process restarts.
    let after = open(url).await;
    // The old bug: a refund after a restart found no charge (`Invalid`, a dead letter).
    let refund = after.refund(&refund_request(&paid)).await.unwrap();
    assert_eq!(after.refunds_made(&paid.charge_id).await.unwrap(), 1);
    // The paid key is still paid: a repeat returns the first receipt and takes nothing.
    assert_eq!(
        after.charge(&charge_request("paid", TOKEN_OK)).await,
        Ok(paid.clone())
    );
    assert_eq!(after.charges_taken("paid").await.unwrap(), 1);
    // The charge hidden by a timeout before the restart is found by a status query after it.
    let Ok(ChargeStatus::Charged(found)) = after.charge_status("unknown").await else {
        panic!("the hidden charge survives the restart");
    };
    assert_eq!(found.amount, eur(4_500));
    // A flaky key's attempts survive too: one transient failure left, then success.
    assert!(matches!(
        after.charge(&flaky).await,
        Err(GatewayError::Transient { .. })
    ));
    assert!(after.charge(&flaky).await.is_ok());
    after.close().await;
    drop(after);

    // Once more: the refund is remembered, not made again.
    let again = open(url).await;
    assert_eq!(again.refund(&refund_request(&paid)).await, Ok(refund));
    assert_eq!(again.refunds_made(&paid.charge_id).await.unwrap(), 1);
    again.close().await;

    // Read from outside any simulator, by URL (as the binary's tests do).
    let totals = ledger_totals(url).await.unwrap();
    assert_eq!(
        (totals.keys, totals.charges_taken, totals.refunds_made),
        (3, 3, 1),
        "{totals:?}"
    );
    assert_eq!(totals.refund_calls, 2, "{totals:?}");
    assert_eq!(totals.charge_calls, 6, "{totals:?}");
    let entry = ledger_charge(url, "unknown").await.unwrap().unwrap();
    assert_eq!(
        (
            entry.charge_calls,
            entry.status_calls,
            entry.times_taken,
            entry.attempts
        ),
        (1, 1, 1, 1),
        "{entry:?}"
    );
    assert_eq!(entry.state, ChargeState::Charged { amount: eur(4_500) });
    let flaky = ledger_charge(url, "flaky").await.unwrap().unwrap();
    assert_eq!((flaky.charge_calls, flaky.attempts), (3, 3), "{flaky:?}");
    assert_eq!(ledger_charge(url, "never").await.unwrap(), None);
}

async fn two_simulators_charging_one_key_at_once_take_the_money_once(url: &str) {
    // Two payment processes on one database.
    let simulators = [Arc::new(open(url).await), Arc::new(open(url).await)];
    const CALLS: usize = 16;

    // Every call at once, half through each simulator: one charge, one receipt.
    let outcomes = concurrently(&simulators, CALLS, |simulator| async move {
        simulator.charge(&charge_request("shared", TOKEN_OK)).await
    })
    .await;
    let receipts: Vec<ChargeReceipt> = outcomes.into_iter().map(Result::unwrap).collect();
    assert!(receipts.iter().all(|receipt| *receipt == receipts[0]));

    // A hidden charge: exactly one call takes the money and hears of a timeout; the others
    // find the charge.
    let outcomes = concurrently(&simulators, CALLS, |simulator| async move {
        simulator
            .charge(&charge_request("shared-unknown", TOKEN_UNKNOWN))
            .await
    })
    .await;
    let unknown = outcomes
        .iter()
        .filter(|outcome| matches!(outcome, Err(GatewayError::UnknownOutcome { .. })))
        .count();
    assert_eq!(unknown, 1, "{outcomes:?}");
    assert!(
        outcomes
            .iter()
            .all(|outcome| matches!(outcome, Ok(_) | Err(GatewayError::UnknownOutcome { .. })))
    );

    // The attempt count is shared: `sim_flaky_5` fails exactly five of the calls.
    let outcomes = concurrently(&simulators, CALLS, |simulator| async move {
        simulator
            .charge(&charge_request("shared-flaky", "sim_flaky_5"))
            .await
    })
    .await;
    let transient = outcomes
        .iter()
        .filter(|outcome| matches!(outcome, Err(GatewayError::Transient { .. })))
        .count();
    assert_eq!(transient, 5, "{outcomes:?}");

    // Refunds of the one charge at once: one refund.
    let paid = receipts[0].clone();
    let refunds = concurrently(&simulators, CALLS, |simulator| {
        let request = refund_request(&paid);
        async move { simulator.refund(&request).await }
    })
    .await;
    let refunds: Vec<_> = refunds.into_iter().map(Result::unwrap).collect();
    assert!(refunds.iter().all(|refund| *refund == refunds[0]));

    for simulator in &simulators {
        assert_eq!(simulator.charges_taken("shared").await.unwrap(), 1);
        assert_eq!(simulator.charges_taken("shared-unknown").await.unwrap(), 1);
        assert_eq!(simulator.charges_taken("shared-flaky").await.unwrap(), 1);
        assert_eq!(simulator.refunds_made(&paid.charge_id).await.unwrap(), 1);
    }
    let shared = ledger_charge(url, "shared").await.unwrap().unwrap();
    assert_eq!(
        (shared.charge_calls, shared.attempts, shared.times_taken),
        (CALLS as u32, 1, 1),
        "{shared:?}"
    );
    let totals = ledger_totals(url).await.unwrap();
    assert_eq!(
        (
            totals.charges_taken,
            totals.refunds_made,
            totals.charge_calls,
            totals.refund_calls
        ),
        (3, 1, 3 * CALLS as u64, CALLS as u64),
        "{totals:?}"
    );
    for simulator in &simulators {
        simulator.close().await;
    }
}

/// `calls` tasks started at once, alternating between the simulators; their outcomes.
async fn concurrently<F, Fut, T>(
    simulators: &[Arc<PaymentSimulator>; 2],
    calls: usize,
    call: F,
) -> Vec<T>
where
    F: Fn(Arc<PaymentSimulator>) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let start = Arc::new(tokio::sync::Barrier::new(calls));
    let tasks: Vec<_> = (0..calls)
        .map(|index| {
            let work = call(Arc::clone(&simulators[index % 2]));
            let start = Arc::clone(&start);
            tokio::spawn(async move {
                start.wait().await;
                work.await
            })
        })
        .collect();
    let mut outcomes = Vec::with_capacity(calls);
    for task in tasks {
        outcomes.push(task.await.unwrap());
    }
    outcomes
}

/// The provider's own database away (the ledger's Postgres restarting): a charge is not tried
/// and says the provider is unreachable (the payment service waits instead of spending its
/// tries); once the database is back the same key charges once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ledger_whose_database_is_away_makes_the_provider_unreachable() {
    let postgres = testkit::own_postgres();
    let simulator = open(&postgres.url).await;
    postgres.stop(testkit::PgStop::Fast).unwrap();
    let outcome = simulator.charge(&charge_request("away", TOKEN_OK)).await;
    assert!(
        matches!(outcome, Err(GatewayError::Unreachable { .. })),
        "{outcome:?}"
    );
    postgres.start().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let receipt = loop {
        match simulator.charge(&charge_request("away", TOKEN_OK)).await {
            Ok(receipt) => break receipt,
            Err(GatewayError::Unreachable { .. }) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            other => panic!("{other:?}"),
        }
    };
    let totals = ledger_totals(&postgres.url).await.unwrap();
    assert_eq!(totals.charges_taken, 1, "{receipt:?}");
}
