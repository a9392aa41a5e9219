with shipped_orders as (
    select * from {{ ref('stg_orders') }}
    where order_status = 'shipped'
)

select
    cast(ordered_at as date) as order_date,
    count(*) as orders,
    sum(amount_usd) as revenue_usd
from shipped_orders
group by 1
