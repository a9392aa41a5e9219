-- The local scheduled departure, read as New York time and truncated to the hour, must be
-- the UTC hour that the source sends as time_hour, which is the key of the weather join.
with flights as (

    select * from {{ ref('stg_flights') }}

),

mismatches as (

    select
        flight_id,
        scheduled_departure_local,
        scheduled_departure_hour_utc
    from flights
    where
        date_trunc('hour', timezone('America/New_York', scheduled_departure_local))
        <> scheduled_departure_hour_utc

)

select * from mismatches
