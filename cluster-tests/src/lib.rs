//! Multi-node tests and system benchmarks of sluice: real `sluice` processes on loopback and a
//! real docker-compose cluster. Helpers shared by the suites live here.
