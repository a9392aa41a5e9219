-- The scheduled time plus the delay must land on the recorded departure clock time, which
-- checks hhmm_to_minutes and minutes_to_interval against the source data.
with departed_flights as (

    select * from {{ ref('int_departed_flights') }}

),

flights as (

    select * from {{ ref('stg_flights') }}

),

mismatches as (

    select
        departed_flights.flight_id,
        departed_flights.departed_at_local,
        flights.departure_minute_of_day
    from departed_flights
    inner join flights
        on departed_flights.flight_id = flights.flight_id
    where
        cast(extract(hour from departed_flights.departed_at_local) as integer) * 60
        + cast(extract(minute from departed_flights.departed_at_local) as integer)
        <> flights.departure_minute_of_day % 1440

)

select * from mismatches
