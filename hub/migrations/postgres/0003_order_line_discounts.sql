-- Online orders get the promotions stores apply: each line keeps the
-- discount it got and the promotion that gave it (the best one; no
-- stacking). total_minor stays the line's amount after the discount.
ALTER TABLE order_lines ADD COLUMN discount_minor BIGINT NOT NULL DEFAULT 0;
ALTER TABLE order_lines ADD COLUMN promotion_id TEXT;
