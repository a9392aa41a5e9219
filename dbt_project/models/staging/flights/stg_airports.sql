with seeded_airports as (

    select * from {{ ref('airports') }}

)

select
    faa as airport_code,
    name as airport_name,
    lat as latitude,
    lon as longitude,
    alt as altitude_feet,
    tzone as time_zone
from seeded_airports
