from twisted.application.service import ServiceMaker

twinkly = ServiceMaker(
    "Twinkly",
    "twinkly.app.tap",
    "PostgreSQL proxy that runs every statement on two databases",
    "twinkly",
)
