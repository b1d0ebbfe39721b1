//! Payment gateways and the payment service (being written).
