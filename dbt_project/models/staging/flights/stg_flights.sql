with source_flights as (

    select * from {{ source('raw_flights', 'flights') }}

),

renamed as (

    select
        cast(id as bigint) as flight_id,
        make_date(cast(year as integer), cast(month as integer), cast(day as integer))
            as flight_date,
        carrier as carrier_code,
        cast(flight as integer) as flight_number,
        tailnum as tail_number,
        origin,
        dest as destination,
        {{ hhmm_to_minutes('sched_dep_time') }} as scheduled_departure_minute_of_day,
        {{ hhmm_to_minutes('dep_time') }} as departure_minute_of_day,
        time_hour as scheduled_departure_hour_utc,
        cast(dep_delay as integer) as departure_delay_minutes,
        cast(arr_delay as integer) as arrival_delay_minutes,
        cast(air_time as integer) as air_time_minutes,
        cast(distance as integer) as distance_miles,
        dep_time is null as is_cancelled,
        updated_at,
        _mocra_run_id as loaded_by_run_id
    from source_flights

),

with_local_timestamps as (

    -- Adding the delay to the schedule, not reading dep_time, puts a departure delayed past
    -- midnight on the next day.
    select
        *,
        cast(flight_date as timestamp)
            + {{ minutes_to_interval('scheduled_departure_minute_of_day') }}
            as scheduled_departure_local,
        cast(flight_date as timestamp)
            + {{ minutes_to_interval('scheduled_departure_minute_of_day') }}
            + {{ minutes_to_interval('departure_delay_minutes') }}
            as departed_at_local
    from renamed

)

select * from with_local_timestamps
