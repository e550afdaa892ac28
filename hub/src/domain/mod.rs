//! The hub's rules, pure: typed values and the decisions made on them,
//! with no database, HTTP or MQTT in sight (nothing here depends on sqlx,
//! axum or rumqttc). Services (the modules beside `domain`) read what a
//! rule needs, call it, and write what it decided in one transaction;
//! the adapters (`api`, `mqtt`) turn requests and messages into service
//! calls.
//!
//! - [`ingest`]: a store's batch against its mark; the plan of a group's
//!   effects.
//! - [`allocation`]: which locations serve an online order.
//! - [`machine`]: the state-machine pattern every status follows.
//! - [`order`]: order statuses, fulfilment, the saga's steps and moves.
//! - [`payment`]: payment methods and statuses, refunds, exceptions.
//! - [`task`]: store task statuses.
//! - [`shipment`]: shipment statuses; when goods leave.
//! - [`price`]: price scopes, the price in force, a store's schedule.
//! - [`product`]: products, promotions, suppliers and categories: what
//!   makes them valid.
//! - [`lines`]: lines of goods as callers send them, merged per SKU.
//! - [`stock`]: movement kinds; what transfers and counts book.

/// A request that breaks a rule; the text says which.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

/// Checks a key people choose (suppliers, categories, carriers, zones,
/// regions): 1 to 64 characters of A-Z, a-z, 0-9, '-', '_', '.', so it is
/// safe in a URL path.
pub fn valid_id(what: &str, id: &str) -> Result<(), Invalid> {
    if id.is_empty()
        || id.len() > 64
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(Invalid(format!(
            "{what}: 1 to 64 characters of A-Z, a-z, 0-9, '-', '_', '.'"
        )));
    }
    Ok(())
}

pub mod allocation;
pub mod ingest;
pub mod lines;
pub mod machine;
pub mod order;
pub mod payment;
pub mod price;
pub mod product;
pub mod shipment;
pub mod stock;
pub mod task;

#[cfg(test)]
mod tests {
    use super::machine::Named;

    /// Each enum's database name is the name serde and the OpenAPI
    /// document give it.
    fn names_agree<T: Named + serde::Serialize + std::fmt::Debug>() {
        for v in T::ALL {
            assert_eq!(serde_json::to_value(v).unwrap(), v.as_str(), "{v:?}");
            assert_eq!(T::parse(v.as_str()).ok(), Some(*v));
        }
    }

    #[test]
    fn every_named_enum_has_one_name_everywhere() {
        names_agree::<super::order::OrderStatus>();
        names_agree::<super::order::SagaStep>();
        names_agree::<super::order::Fulfilment>();
        names_agree::<super::payment::PaymentStatus>();
        names_agree::<super::payment::PaymentMethod>();
        names_agree::<super::payment::ExceptionStatus>();
        names_agree::<super::task::TaskStatus>();
        names_agree::<super::shipment::ShipmentStatus>();
        names_agree::<super::price::PriceScope>();
        names_agree::<super::product::Measure>();
    }

    #[test]
    fn the_openapi_document_names_the_same_values() {
        use utoipa::PartialSchema;
        let schema = serde_json::to_value(super::order::OrderStatus::schema()).unwrap();
        assert!(schema.to_string().contains("\"awaiting_shipment\""), "{schema}");
        let schema = serde_json::to_value(super::product::Measure::schema()).unwrap();
        assert_eq!(schema["enum"], serde_json::json!(["each", "grams"]));
    }
}
