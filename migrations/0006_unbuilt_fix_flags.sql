-- Earlier builds registered a row for every flag of the design, including fixes that did
-- not exist yet, and the admin API let a workshop switch them. A flag is now registered
-- only when its fix lands; remove the rows of the flags whose fixes have not landed, so
-- that each one starts on (the design's default) when it does, instead of inheriting a
-- switch that was flipped while it did nothing.
delete from fix_flags
where name in ('cache', 'async_jobs', 'rate_limit', 'load_shedding', 'timeouts', 'circuit_breaker');
