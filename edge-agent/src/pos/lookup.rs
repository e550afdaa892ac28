//! Finding what a lane scans or asks for: barcodes (GS1 variable measure
//! included), the scale, price checks.

use storegate_protocol::device::{BusError, ErrorCode, PosResult, PriceView};
use storegate_protocol::event::{EventBody, WeightRecord};
use storegate_protocol::{Gtin, Money, Sku};

use super::{Lane, err, internal};
use crate::barcode::{self, Decoded};
use crate::catalog::ProductRow;
use crate::journal::now_ms;
use crate::scale::ScaleError;

pub(super) struct Resolved {
    pub(super) product: ProductRow,
    pub(super) gtin: Option<Gtin>,
    pub(super) grams: Option<u32>,
    pub(super) fixed_minor: Option<i64>,
}

impl Lane {
    pub(super) async fn resolve(&self, code: Option<&str>, sku: Option<&Sku>) -> Result<Resolved, BusError> {
        let catalog = &self.ctx.catalog;
        if let Some(code) = code {
            let scan = barcode::decode(code, &self.ctx.cfg.layouts)
                .map_err(|e| err(ErrorCode::InvalidBarcode, e.to_string()))?;
            return match scan.decoded {
                Decoded::Gtin(g) => {
                    let product = catalog
                        .by_gtin14(&g.to_gtin14())
                        .await
                        .map_err(internal)?
                        .ok_or_else(|| {
                            err(ErrorCode::UnknownBarcode, format!("no product has barcode {g}"))
                        })?;
                    Ok(Resolved {
                        product,
                        gtin: Some(g),
                        grams: None,
                        fixed_minor: None,
                    })
                }
                Decoded::Variable {
                    item_gtin,
                    grams,
                    price_minor,
                } => {
                    let product = catalog
                        .by_gtin14(&format!("{item_gtin:0>14}"))
                        .await
                        .map_err(internal)?
                        .ok_or_else(|| {
                            err(
                                ErrorCode::UnknownBarcode,
                                format!("no product for variable-measure item {item_gtin}"),
                            )
                        })?;
                    Ok(Resolved {
                        product,
                        gtin: Gtin::parse(code.trim()).ok(),
                        grams,
                        fixed_minor: price_minor,
                    })
                }
            };
        }
        if let Some(sku) = sku {
            let product = catalog
                .by_sku(sku.as_str())
                .await
                .map_err(internal)?
                .ok_or_else(|| err(ErrorCode::UnknownSku, format!("no product {sku}")))?;
            return Ok(Resolved {
                product,
                gtin: None,
                grams: None,
                fixed_minor: None,
            });
        }
        Err(err(ErrorCode::BadRequest, "add_item needs a code or a sku"))
    }

    pub(super) async fn weigh(&self) -> Result<u32, BusError> {
        let scale = self.scale.as_ref().ok_or_else(|| {
            err(
                ErrorCode::WeightRequired,
                "this product is sold by weight and the lane has no scale; send grams",
            )
        })?;
        let mg = scale
            .weigh(self.ctx.cfg.weigh_timeout)
            .await
            .map_err(|e| match e {
                ScaleError::Unstable => err(ErrorCode::ScaleUnstable, "the scale did not settle; try again"),
                ScaleError::Range(r) => err(ErrorCode::ScaleRange, format!("scale {r}")),
                other => err(ErrorCode::ScaleUnavailable, other.to_string()),
            })?;
        // The reading is telemetry too (dropped first under disk pressure).
        let journal = self.ctx.journal.clone();
        let body = EventBody::Weight(WeightRecord {
            device: scale.id.clone(),
            milligrams: mg,
            stable: true,
        });
        tokio::spawn(async move {
            let _ = journal.record(body, None).await;
        });
        let grams = (mg + 500) / 1000;
        if grams <= 0 {
            return Err(err(ErrorCode::ScaleUnstable, "nothing on the scale"));
        }
        u32::try_from(grams).map_err(|_| err(ErrorCode::ScaleRange, "weight out of range"))
    }

    pub(super) async fn price_lookup(
        &self,
        code: Option<String>,
        sku: Option<Sku>,
    ) -> Result<PosResult, BusError> {
        let r = self.resolve(code.as_deref(), sku.as_ref()).await?;
        let now = now_ms();
        let price = self
            .ctx
            .catalog
            .price(r.product.sku.as_str(), now)
            .await
            .map_err(internal)?;
        let Some(price) = price.or(r.fixed_minor.map(|m| Money::new(m, self.ctx.cfg.currency))) else {
            return Err(err(ErrorCode::NoPrice, format!("{} has no price", r.product.sku)));
        };
        let promotions = self
            .ctx
            .catalog
            .promotions(now)
            .await
            .map_err(internal)?
            .into_iter()
            .filter(|p| p.skus.contains(&r.product.sku))
            .map(|p| p.label)
            .collect();
        let stock = self
            .ctx
            .journal
            .stock_view(r.product.sku.as_str())
            .await
            .map_err(internal)?;
        Ok(PosResult::Price(PriceView {
            sku: r.product.sku,
            name: r.product.name,
            measure: r.product.measure,
            price: price.minor,
            currency: price.currency.to_string(),
            promotions,
            stock,
        }))
    }
}
