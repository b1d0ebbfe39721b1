//! A committed command is never answered as a failure. With the history read model stalled (its
//! tables locked by another session, as a long vacuum or a stuck projector would leave them),
//! commands answer from the log, each saying in `extensions.readSide` which read models are
//! behind; once the read model catches up it shows exactly what those answers said.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

const BOOKING: &str = "id status pickupAt returnAt heldUntil total { amount currency } \
    lines { code label amount { amount currency } }";

/// The answer is data, and says the history read model (the one stalled) is behind, and only
/// it: the stalled projector's open transaction holds back no other reader of the log.
fn behind_with_history(answer: &serde_json::Value) {
    assert!(answer.get("errors").is_none(), "{answer:#}");
    assert_eq!(
        answer["extensions"],
        json!({ "readSide": { "behind": ["history"] } })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_answer_from_the_log_while_the_read_side_is_behind() {
    let app = TestApp::with(Options {
        // Long enough for the setup's car mutations on a loaded machine (they still answer
        // UNAVAILABLE past it), short enough for the three stalled answers below.
        read_your_writes: Duration::from_secs(3),
        ..Options::default()
    })
    .await;
    app.add_branch("LIS", 38.72, -9.14).await;
    let car = app.add_car("LIS", "Fiat", "40.00").await;
    let (customer, _) = app.register("behind@fleet.test").await;
    let held = app
        .ok(
            Some(&customer),
            &format!(
                "mutation($i: BookingRequestInput!) {{ requestBooking(input: $i) {{ {BOOKING} }} }}"
            ),
            json!({ "i": { "carId": car, "pickupAt": at(3, 0), "returnAt": at(5, 0) } }),
        )
        .await;
    let booking = held["requestBooking"]["id"].as_str().unwrap().to_owned();
    let read_back = format!("query($b: UUID!) {{ booking(id: $b) {{ {BOOKING} }} }}");
    eventually(30, || async {
        let now = app
            .ok(Some(&customer), &read_back, json!({ "b": booking }))
            .await;
        (now["booking"] == held["requestBooking"]).then_some(())
    })
    .await;

    // Another session keeps the history projection from writing (reads go on).
    let mut blocker = app.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE rm_bookings, rm_payments IN SHARE ROW EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();

    let (status, paid) = app
        .post(
            Some(&customer),
            "mutation($b: UUID!) { payBooking(bookingId: $b, method: { kind: CARD, token: \"tok_success\" }) { status amount { amount currency } refunded { amount } } }",
            json!({ "b": booking }),
        )
        .await;
    assert_eq!(status, 200, "{paid:#}");
    assert_eq!(
        paid["data"],
        json!({ "payBooking": { "status": "CAPTURED",
                                "amount": { "amount": "80.00", "currency": "USD" },
                                "refunded": { "amount": "0.00" } } })
    );
    behind_with_history(&paid);
    // Moved by a day, then cancelled: each answer is the booking as the command left it.
    let (_, moved) = app
        .post(
            Some(&customer),
            &format!("mutation($b: UUID!, $p: DateTime!, $r: DateTime!) {{ modifyBooking(id: $b, pickupAt: $p, returnAt: $r) {{ {BOOKING} }} }}"),
            json!({ "b": booking, "p": at(3, 0), "r": at(6, 0) }),
        )
        .await;
    behind_with_history(&moved);
    assert_eq!(moved["data"]["modifyBooking"]["status"], "CONFIRMED");
    assert_eq!(
        moved["data"]["modifyBooking"]["total"],
        json!({ "amount": "120.00", "currency": "USD" })
    );
    let (_, cancelled) = app
        .post(
            Some(&customer),
            &format!("mutation($b: UUID!) {{ cancelBooking(id: $b, reason: \"plans changed\") {{ {BOOKING} }} }}"),
            json!({ "b": booking }),
        )
        .await;
    behind_with_history(&cancelled);
    let answered = cancelled["data"]["cancelBooking"].clone();
    assert_eq!(answered["status"], "CANCELLED");
    // The read model, meanwhile, still shows the booking as it was before the payment.
    let stale = app
        .ok(
            Some(&customer),
            &format!("query($b: UUID!) {{ booking(id: $b) {{ {BOOKING} }} }}"),
            json!({ "b": booking }),
        )
        .await;
    assert_eq!(stale["booking"], held["requestBooking"]);

    // Released, the read model catches up to exactly what the commands answered.
    blocker.commit().await.unwrap();
    let caught_up = eventually(30, || async {
        let now = app
            .ok(
                Some(&customer),
                &format!("query($b: UUID!) {{ booking(id: $b) {{ {BOOKING} }} }}"),
                json!({ "b": booking }),
            )
            .await;
        (now["booking"]["status"] == "CANCELLED").then_some(now)
    })
    .await;
    assert_eq!(caught_up["booking"], answered);
    // And a command answered when nothing lags carries no note.
    let (_, fresh) = app
        .post(
            Some(&customer),
            &format!(
                "mutation($i: BookingRequestInput!) {{ requestBooking(input: $i) {{ {BOOKING} }} }}"
            ),
            json!({ "i": { "carId": car, "pickupAt": at(10, 0), "returnAt": at(11, 0) } }),
        )
        .await;
    assert!(fresh.get("extensions").is_none(), "{fresh:#}");
    app.shutdown().await;
}

/// A staff command on a car answers from the Car aggregate while the search model is stalled,
/// and the read model catches up to exactly that answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_car_command_answers_from_the_aggregate_while_search_is_behind() {
    let app = TestApp::with(Options {
        read_your_writes: Duration::from_secs(2),
        ..Options::default()
    })
    .await;
    let admin = app.admin_token.clone();
    app.add_branch("LIS", 38.72, -9.14).await;
    let car = app.add_car("LIS", "Fiat", "40.00").await;
    const CAR: &str = "id make dailyRate { amount currency } branch { code } status odometerKm";
    let mut blocker = app.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE rm_search_cars IN SHARE ROW EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let (_, changed) = app
        .post(
            Some(&admin),
            &format!("mutation($c: UUID!) {{ changeDailyRate(id: $c, dailyRate: \"45.50\") {{ {CAR} }} }}"),
            json!({ "c": car }),
        )
        .await;
    assert!(changed.get("errors").is_none(), "{changed:#}");
    assert_eq!(
        changed["extensions"],
        json!({ "readSide": { "behind": ["search"] } })
    );
    let answered = changed["data"]["changeDailyRate"].clone();
    assert_eq!(
        answered,
        json!({ "id": car, "make": "Fiat", "dailyRate": { "amount": "45.50", "currency": "USD" },
                "branch": { "code": "LIS" }, "status": "AVAILABLE", "odometerKm": null })
    );
    blocker.commit().await.unwrap();
    let caught_up = eventually(30, || async {
        let now = app
            .ok(
                None,
                &format!("query($c: UUID!) {{ car(id: $c) {{ {CAR} }} }}"),
                json!({ "c": car }),
            )
            .await;
        (now["car"]["dailyRate"]["amount"] == "45.50").then_some(now)
    })
    .await;
    assert_eq!(caught_up["car"], answered);
    app.shutdown().await;
}
