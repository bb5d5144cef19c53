import azure.functions as func
import module_that_does_not_exist  # noqa: F401  (the start-up error must name this)

app = func.FunctionApp()
