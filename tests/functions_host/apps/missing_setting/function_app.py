import azure.functions as func

app = func.FunctionApp()


@app.queue_trigger(arg_name="msg", queue_name="%QUEUE_NAME_NOT_SET%", connection="AzureWebJobsStorage")
def q(msg: func.QueueMessage) -> None:
    pass
