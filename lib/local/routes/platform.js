'use strict'
// GET /v1/platform/regions: Fly's region list (answered without a token, as
// Fly does).

const REGIONS = [
  ['ams', 'Amsterdam, Netherlands', 'eu', 52.374, 4.8897],
  ['arn', 'Stockholm, Sweden', 'eu', 59.6512, 17.9178],
  ['bom', 'Mumbai, India', 'ap', 19.097, 72.8745],
  ['cdg', 'Paris, France', 'eu', 48.8607, 2.3531],
  ['dfw', 'Dallas, Texas (US)', 'na', 32.7791, -96.8003],
  ['ewr', 'Secaucus, NJ (US)', 'na', 40.7893, -74.0565],
  ['fra', 'Frankfurt, Germany', 'eu', 50.1167, 8.6833],
  ['gru', 'Sao Paulo, Brazil', 'sa', -23.5505, -46.6333],
  ['iad', 'Ashburn, Virginia (US)', 'na', 39.0438, -77.4874],
  ['jnb', 'Johannesburg, South Africa', 'af', -26.1367, 28.2411],
  ['lax', 'Los Angeles, California (US)', 'na', 33.9416, -118.4085],
  ['lhr', 'London, United Kingdom', 'eu', 51.5074, -0.1278],
  ['nrt', 'Tokyo, Japan', 'ap', 35.6762, 139.6503],
  ['ord', 'Chicago, Illinois (US)', 'na', 41.8781, -87.6298],
  ['sin', 'Singapore, Singapore', 'ap', 1.3521, 103.8198],
  ['sjc', 'San Jose, California (US)', 'na', 37.3541, -121.9552],
  ['syd', 'Sydney, Australia', 'oc', -33.8688, 151.2093],
  ['yyz', 'Toronto, Canada', 'na', 43.6532, -79.3832]
]
const REGION_CODES = new Set(REGIONS.map((r) => r[0]))

function routes (route, { store }) {
  route('GET', '/v1/platform/regions', () => [200, {
    nearest: store.region,
    regions: REGIONS.map(([code, name, geo, lat, lon]) => ({
      code,
      name,
      geo_region: geo,
      latitude: lat,
      longitude: lon,
      gateway_available: true,
      requires_paid_plan: false,
      deprecated: false,
      mpg_available: false
    }))
  }], { noAuth: true })
}

module.exports = { routes, REGIONS, REGION_CODES }
