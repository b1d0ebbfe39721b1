//! Forgiving, exact inputs: branch codes in any case, text search that knows where a car
//! stands, and validation errors that name the argument the client sent.

mod common;

use common::{TestApp, at};
use serde_json::json;

#[tokio::test]
async fn branch_codes_are_case_insensitive_and_search_knows_the_city() {
    let app = TestApp::start().await;
    app.ok(
        Some(&app.admin_token),
        "mutation { addBranch(input: { code: \"ber\", name: \"Berlin Hauptbahnhof\", city: \"Berlin\", \
           position: { latitude: 52.52, longitude: 13.37 } }) { code } }",
        json!({}),
    )
    .await;
    let branches = app.ok(None, "{ branches { code } }", json!({})).await;
    assert_eq!(
        branches["branches"],
        json!([{ "code": "BER" }]),
        "stored upper case"
    );
    let car = app.add_car(" Ber ", "Skoda", "40.00").await;
    let search = "query($f: CarSearchInput!) { searchCars(filter: $f) { totalCount edges { node { id branch { code } } } } }";
    for (branch, text) in [
        (Some("ber"), None),
        (None, Some("berlin")),
        (None, Some("Hauptbahnhof skoda")),
    ] {
        let found = app
            .ok(
                None,
                search,
                json!({ "f": { "pickupAt": at(3, 0), "returnAt": at(4, 0), "branchCode": branch, "text": text } }),
            )
            .await;
        assert_eq!(
            found["searchCars"]["totalCount"], 1,
            "{branch:?} {text:?}: {found:#}"
        );
        assert_eq!(
            found["searchCars"]["edges"][0]["node"]["id"],
            car.to_string()
        );
        assert_eq!(
            found["searchCars"]["edges"][0]["node"]["branch"]["code"],
            "BER"
        );
    }
    let nowhere = app
        .ok(
            None,
            search,
            json!({ "f": { "pickupAt": at(3, 0), "returnAt": at(4, 0), "text": "Munich" } }),
        )
        .await;
    assert_eq!(nowhere["searchCars"]["totalCount"], 0);

    let (customer, _) = app.register("case@fleet.test").await;
    let booked = app
        .ok(
            Some(&customer),
            "mutation($i: BookingRequestInput!) { requestBooking(input: $i) { id pickupBranch { code } } }",
            json!({ "i": { "carId": car, "pickupAt": at(3, 0), "returnAt": at(4, 0), "pickupBranchCode": "bEr" } }),
        )
        .await;
    assert_eq!(booked["requestBooking"]["pickupBranch"]["code"], "BER");

    // A pick-up time in the past is named as the client named it.
    let (_, body) = app
        .post(
            Some(&customer),
            "mutation($i: BookingRequestInput!) { requestBooking(input: $i) { id } }",
            json!({ "i": { "carId": car, "pickupAt": at(-2, 0), "returnAt": at(9, 0) } }),
        )
        .await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
        "{body:#}"
    );
    assert_eq!(
        body["errors"][0]["extensions"]["field"], "pickupAt",
        "{body:#}"
    );
    app.shutdown().await;
}
