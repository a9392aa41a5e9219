with flights as (

    select * from {{ ref('stg_flights') }}

),

departed_flights as (

    select
        flight_id,
        flight_date,
        carrier_code,
        flight_number,
        origin,
        destination,
        scheduled_departure_local,
        scheduled_departure_hour_utc,
        departed_at_local,
        departure_delay_minutes,
        departure_delay_minutes > 15 as is_delayed_over_15_minutes,
        arrival_delay_minutes
    from flights
    where not is_cancelled

)

select * from departed_flights
