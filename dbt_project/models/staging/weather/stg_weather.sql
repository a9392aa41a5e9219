with source_weather as (

    select * from {{ source('raw_weather', 'weather') }}

),

renamed as (

    select
        origin,
        time_hour as observed_hour_utc,
        make_date(cast(year as integer), cast(month as integer), cast(day as integer))
            as observed_date,
        cast(hour as integer) as observed_hour_local,
        temp as temperature_f,
        dewp as dew_point_f,
        humid as relative_humidity_pct,
        wind_dir as wind_direction_degrees,
        wind_speed as wind_speed_mph,
        wind_gust as wind_gust_mph,
        precip as precipitation_inches,
        pressure as pressure_millibars,
        visib as visibility_miles,

        -- Rain intensity per hour as the AMS Glossary of Meteorology defines it.
        case
            when precip is null then 'unknown'
            when precip = 0 then 'none'
            when precip <= 0.10 then 'light'
            when precip <= 0.30 then 'moderate'
            else 'heavy'
        end as precipitation_intensity,

        -- The visibility limits of the flight categories LIFR, IFR, MVFR and VFR that the
        -- NWS Aviation Weather Center uses.
        case
            when visib is null then 'unknown'
            when visib < 1 then 'under_1_mile'
            when visib < 3 then '1_to_3_miles'
            when visib <= 5 then '3_to_5_miles'
            else 'over_5_miles'
        end as visibility_band,

        _mocra_run_id as loaded_by_run_id
    from source_weather

)

select * from renamed
