with seeded_airlines as (

    select * from {{ ref('airlines') }}

)

select
    carrier as carrier_code,
    name as carrier_name
from seeded_airlines
