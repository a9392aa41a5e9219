with flights as (

    select * from {{ ref('stg_flights') }}

),

weather as (

    select * from {{ ref('stg_weather') }}

),

airports as (

    select * from {{ ref('stg_airports') }}

),

flights_with_weather as (

    -- A flight whose departure hour has no observation at its airport stays in, as 'unknown'.
    select
        flights.origin,
        coalesce(weather.precipitation_intensity, 'unknown') as precipitation_intensity,
        coalesce(weather.visibility_band, 'unknown') as visibility_band,
        weather.observed_hour_utc,
        flights.is_cancelled,
        flights.departure_delay_minutes
    from flights
    left join weather
        on flights.origin = weather.origin
        and flights.scheduled_departure_hour_utc = weather.observed_hour_utc

),

delay_per_weather as (

    -- Cancelled flights have no delay, so the delay aggregates cover departed flights only.
    select
        origin,
        precipitation_intensity,
        visibility_band,
        count(distinct observed_hour_utc) as observed_hours,
        count(*) as flights_scheduled,
        count(*) filter (where not is_cancelled) as flights_departed,
        count(*) filter (where is_cancelled) as flights_cancelled,
        avg(departure_delay_minutes) as avg_departure_delay_minutes,
        percentile_cont(0.5) within group (order by departure_delay_minutes)
            as median_departure_delay_minutes,
        count(*) filter (where departure_delay_minutes > 15) as flights_delayed_over_15_minutes
    from flights_with_weather
    group by origin, precipitation_intensity, visibility_band

),

weather_delay as (

    select
        delay_per_weather.origin,
        airports.airport_name as origin_name,
        delay_per_weather.precipitation_intensity,
        delay_per_weather.visibility_band,
        delay_per_weather.observed_hours,
        delay_per_weather.flights_scheduled,
        delay_per_weather.flights_departed,
        delay_per_weather.flights_cancelled,
        {{ safe_divide(
            'delay_per_weather.flights_cancelled',
            'delay_per_weather.flights_scheduled'
        ) }} as cancelled_share,
        delay_per_weather.avg_departure_delay_minutes,
        delay_per_weather.median_departure_delay_minutes,
        delay_per_weather.flights_delayed_over_15_minutes,
        {{ safe_divide(
            'delay_per_weather.flights_delayed_over_15_minutes',
            'delay_per_weather.flights_departed'
        ) }} as delayed_over_15_minutes_share,
        {{ mocra_run_id_literal() }} as _mocra_run_id
    from delay_per_weather
    left join airports
        on delay_per_weather.origin = airports.airport_code

)

select * from weather_delay
